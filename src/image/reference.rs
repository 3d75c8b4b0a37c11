//! Image references, parsed and normalized the way Docker and containerd do it
//! (distribution/reference's grammar), so "busybox", "library/busybox:latest" and
//! "docker.io/library/busybox:latest" all name the same image.

use std::fmt;

use super::digest;
use super::ImageError;

const DEFAULT_DOMAIN: &str = "docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// A normalized reference: `repository` always carries its domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Normalizes like Docker/containerd: "busybox" -> "docker.io/library/busybox:latest".
pub fn normalize_reference(reference: &str) -> Result<String, ImageError> {
    parse(reference).map(|r| r.to_string())
}

/// Parses and normalizes; a reference with neither tag nor digest gets ":latest".
pub(crate) fn parse(reference: &str) -> Result<Reference, ImageError> {
    let err = |reason: &str| ImageError::invalid_ref(reference, reason);
    if reference.is_empty() {
        return Err(err("empty reference"));
    }
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => {
            digest::sha256_hex(d).map_err(|e| err(&e.to_string()))?;
            (n, Some(d.to_string()))
        }
        None => (reference, None),
    };
    // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_and_tag[..last_slash + i],
            Some(&name_and_tag[last_slash + i + 1..]),
        ),
        None => (name_and_tag, None),
    };
    if let Some(tag) = tag {
        check_tag(tag).map_err(err)?;
    }
    if name.is_empty() {
        return Err(err("empty repository name"));
    }

    let (domain, path) = split_domain(name);
    check_domain(domain).map_err(err)?;
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_PREFIX}{path}")
    } else {
        path.to_string()
    };
    for component in path.split('/') {
        check_path_component(component).map_err(err)?;
    }
    if digest::is_sha256_hex(name) {
        return Err(err(
            "a 64-character hex string is an image id, not a repository name",
        ));
    }
    let repository = format!("{domain}/{path}");
    if repository.len() > MAX_NAME_LEN {
        return Err(err("repository name longer than 255 characters"));
    }
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_TAG.to_string()),
    };
    Ok(Reference {
        repository,
        tag,
        digest,
    })
}

/// The first component is a registry only if it looks like a host: Docker's rule.
fn split_domain(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            let domain = if first == "index.docker.io" {
                DEFAULT_DOMAIN
            } else {
                first
            };
            (domain, rest)
        }
        _ => (DEFAULT_DOMAIN, name),
    }
}

fn check_domain(domain: &str) -> Result<(), &'static str> {
    let (host, port) = match domain.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("registry port must be numeric");
        }
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || !host.split('.').all(label_ok) {
        return Err("invalid registry host name");
    }
    Ok(())
}

/// path-component := [a-z0-9]+ (separator [a-z0-9]+)*, separator := [_.] | "__" | "-"+
fn check_path_component(component: &str) -> Result<(), &'static str> {
    if component.is_empty() {
        return Err("empty path component (double or trailing '/')");
    }
    if component.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("repository name must be lowercase");
    }
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return Err("repository path components must start and end with a letter or digit");
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let valid = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !valid {
            return Err("invalid character or separator in repository name");
        }
    }
    Ok(())
}

/// tag := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
fn check_tag(tag: &str) -> Result<(), &'static str> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match tag.as_bytes().first() {
        None => Err("empty tag"),
        Some(&b) if !word(b) => Err("tag must start with a letter, digit or '_'"),
        _ if tag.len() > MAX_TAG_LEN => Err("tag longer than 128 characters"),
        _ if !tag.bytes().all(|b| word(b) || b == b'.' || b == b'-') => {
            Err("invalid character in tag")
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalizes_like_docker() {
        let d = format!("sha256:{HEX}");
        let cases: Vec<(String, String)> = vec![
            ("busybox".into(), "docker.io/library/busybox:latest".into()),
            (
                "busybox:1.36".into(),
                "docker.io/library/busybox:1.36".into(),
            ),
            (
                "library/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "docker.io/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "index.docker.io/library/busybox:1".into(),
                "docker.io/library/busybox:1".into(),
            ),
            (
                "docker.io/library/busybox:1.36".into(),
                "docker.io/library/busybox:1.36".into(),
            ),
            ("org/app".into(), "docker.io/org/app:latest".into()),
            (
                "registry.local:5000/team/app".into(),
                "registry.local:5000/team/app:latest".into(),
            ),
            (
                "localhost:5000/x/y:tag".into(),
                "localhost:5000/x/y:tag".into(),
            ),
            ("localhost/x".into(), "localhost/x:latest".into()),
            (
                "ghcr.io/a/b-c_d.e__f:v1.2-rc_3".into(),
                "ghcr.io/a/b-c_d.e__f:v1.2-rc_3".into(),
            ),
            (
                format!("busybox@{d}"),
                format!("docker.io/library/busybox@{d}"),
            ),
            (
                format!("busybox:1.36@{d}"),
                format!("docker.io/library/busybox:1.36@{d}"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_reference(&input).unwrap(), want, "input {input}");
        }
    }

    #[test]
    fn rejects_invalid_references() {
        let long_tag = format!("busybox:{}", "a".repeat(129));
        for (input, reason) in [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("org/App:1", "lowercase"),
            ("busybox:", "empty tag"),
            ("busybox:-x", "tag must start"),
            ("busybox:a/b", "port must be numeric"),
            ("bad name", "invalid character"),
            ("a//b", "empty path component"),
            ("a/", "empty path component"),
            ("-a", "start and end"),
            ("a...b", "separator"),
            ("busybox@sha256:abc", "64 lowercase hex"),
            ("busybox@md5:abc", "only sha256"),
            ("reg:port/x", "port must be numeric"),
            (HEX, "image id"),
            (long_tag.as_str(), "longer than 128"),
        ] {
            match normalize_reference(input) {
                Err(ImageError::InvalidReference { reason: r, .. }) => {
                    assert!(
                        r.contains(reason),
                        "{input:?}: reason {r:?} lacks {reason:?}"
                    )
                }
                other => panic!("{input:?} gave {other:?}"),
            }
        }
    }
}

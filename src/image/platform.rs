//! Platforms (os/architecture/variant): detecting this machine's, parsing `--platform`, and
//! picking the best manifest for it out of a multi-platform index — containerd's matching rules,
//! narrowed to what an edge device meets (linux on amd64, arm64, arm v6/v7, and the rest by name).

use std::fmt;

use super::oci::{self, Descriptor};
use super::ImageError;

/// A platform in the OCI vocabulary (GOOS / GOARCH names), e.g. linux/arm/v7.
#[derive(Debug, Clone, PartialEq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

impl Platform {
    /// This machine: linux, the GOARCH name of the build's architecture, and for ARM the variant
    /// (arm64 is always v8; 32-bit arm reads "CPU architecture" from /proc/cpuinfo, v7 if unknown).
    pub fn detect() -> Platform {
        let arch = oci::go_arch(std::env::consts::ARCH);
        let variant = match arch {
            "arm64" => Some("v8".to_string()),
            "arm" => Some(
                std::fs::read_to_string("/proc/cpuinfo")
                    .ok()
                    .and_then(|c| arm_variant_from_cpuinfo(&c))
                    .unwrap_or_else(|| "v7".to_string()),
            ),
            _ => None,
        };
        Platform {
            os: "linux".to_string(),
            architecture: arch.to_string(),
            variant,
        }
    }

    /// Parses `os/arch[/variant]` as `--platform` takes it; aliases are normalized.
    pub fn parse(s: &str) -> Result<Platform, ImageError> {
        let invalid = |reason: &str| ImageError::InvalidPlatform {
            platform: s.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(invalid("expected os/arch or os/arch/variant"));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        }
        .normalized())
    }

    /// containerd's normalization: arch aliases, arm64's only variant is v8, bare arm means v7.
    pub(crate) fn normalized(&self) -> Platform {
        let (arch, alias_variant) = match self.architecture.as_str() {
            "x86_64" | "x86-64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "armhf" => ("arm", Some("v7")),
            "armel" => ("arm", Some("v6")),
            "i386" => ("386", None),
            other => (other, None),
        };
        let variant = self.variant.as_deref().or(alias_variant).map(|v| {
            if v.starts_with('v') {
                v.to_string()
            } else {
                format!("v{v}")
            }
        });
        let variant = match (arch, variant) {
            ("arm64", None) => Some("v8".to_string()),
            ("arm", None) => Some("v7".to_string()),
            ("amd64", Some(v)) if v == "v1" => None,
            (_, v) => v,
        };
        Platform {
            os: self.os.clone(),
            architecture: arch.to_string(),
            variant,
        }
    }
}

/// The value of "CPU architecture: 7" in /proc/cpuinfo as a variant (v5..v8).
fn arm_variant_from_cpuinfo(cpuinfo: &str) -> Option<String> {
    let value = cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "CPU architecture").then(|| v.trim())
    })?;
    // The Raspberry Pi Zero/1 report "7" but are ARMv6 cores (containerd has the same check).
    if cpuinfo.contains("ARMv6-compatible") {
        return Some("v6".to_string());
    }
    let n: u32 = value
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .get(..1)?
        .parse()
        .ok()?;
    Some(format!("v{}", n.clamp(5, 8)))
}

/// How well an index entry's platform serves `want` (already normalized); None = unusable.
/// An exact variant beats a missing one; an older arm variant (v6 on a v7 CPU) is the last resort.
/// (A variant-less arm entry is usually v7, so it ranks above the older-variant fallback.)
fn score(want: &Platform, entry: &oci::Platform) -> Option<u32> {
    let declared_variant = entry.variant.as_deref().filter(|v| !v.is_empty());
    let have = Platform {
        os: entry.os.clone(),
        architecture: entry.architecture.clone(),
        variant: None,
    }
    .normalized();
    if have.os != want.os || have.architecture != want.architecture {
        return None;
    }
    let have_variant = match declared_variant {
        None => return Some(2),
        Some(v) => {
            Platform {
                variant: Some(v.to_string()),
                ..have
            }
            .normalized()
            .variant
        }
    };
    if have_variant == want.variant {
        return Some(3);
    }
    match (want.architecture.as_str(), &have_variant, &want.variant) {
        ("arm", Some(h), Some(w)) if arm_level(h) < arm_level(w) => Some(1),
        _ => None,
    }
}

fn arm_level(v: &str) -> u32 {
    v.trim_start_matches('v').parse().unwrap_or(u32::MAX)
}

/// The best manifest of an index for `want`: highest score, first in document order on ties.
pub(crate) fn select<'a>(
    manifests: &'a [Descriptor],
    want: &Platform,
) -> Result<&'a Descriptor, ImageError> {
    let want = want.normalized();
    let mut best: Option<(u32, &Descriptor)> = None;
    for d in manifests {
        if let Some(s) = d.platform.as_ref().and_then(|p| score(&want, p)) {
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, d));
            }
        }
    }
    best.map(|(_, d)| d)
        .ok_or_else(|| ImageError::NoMatchingPlatform {
            wanted: want.to_string(),
            available: manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn entry(platform: &str) -> Descriptor {
        let mut parts = platform.split('/');
        Descriptor {
            media_type: oci::MEDIA_OCI_MANIFEST.into(),
            digest: platform.into(),
            size: 1,
            annotations: BTreeMap::new(),
            platform: Some(oci::Platform {
                os: parts.next().unwrap_or_default().into(),
                architecture: parts.next().unwrap_or_default().into(),
                variant: parts.next().map(String::from),
            }),
        }
    }

    fn pick(entries: &[&str], want: &str) -> Result<String, String> {
        let ms: Vec<Descriptor> = entries.iter().map(|e| entry(e)).collect();
        select(&ms, &Platform::parse(want).unwrap())
            .map(|d| d.digest.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn selection_table() {
        let docker_hub = [
            "linux/amd64",
            "unknown/unknown",
            "linux/arm/v6",
            "linux/arm/v7",
            "linux/arm64/v8",
            "linux/386",
        ];
        for (entries, want, got) in [
            (&docker_hub[..], "linux/amd64", "linux/amd64"),
            (&docker_hub[..], "linux/arm64", "linux/arm64/v8"),
            (&docker_hub[..], "linux/arm64/v8", "linux/arm64/v8"),
            (&docker_hub[..], "linux/arm/v7", "linux/arm/v7"),
            (&docker_hub[..], "linux/arm/v6", "linux/arm/v6"),
            (&docker_hub[..], "linux/arm", "linux/arm/v7"),
            (&docker_hub[..], "linux/aarch64", "linux/arm64/v8"),
            // Missing variants are accepted as a fallback.
            (
                &["linux/arm64", "linux/amd64"][..],
                "linux/arm64/v8",
                "linux/arm64",
            ),
            (
                &["linux/arm", "linux/arm/v6"][..],
                "linux/arm/v7",
                "linux/arm",
            ),
            (
                &["linux/arm/v6", "linux/arm"][..],
                "linux/arm/v6",
                "linux/arm/v6",
            ),
            // An exact variant beats an earlier variant-less entry.
            (
                &["linux/arm", "linux/arm/v7"][..],
                "linux/arm/v7",
                "linux/arm/v7",
            ),
            // An older arm variant runs on a newer CPU, not the reverse.
            (&["linux/arm/v6"][..], "linux/arm/v7", "linux/arm/v6"),
            (
                &["linux/amd64/v3", "linux/amd64"][..],
                "linux/amd64",
                "linux/amd64",
            ),
        ] {
            assert_eq!(
                pick(entries, want).as_deref(),
                Ok(got),
                "{want} from {entries:?}"
            );
        }
        for (entries, want) in [
            (&["linux/arm/v7"][..], "linux/arm/v6"),
            (&["linux/amd64/v3"][..], "linux/amd64"),
            (&["linux/amd64", "windows/arm64"][..], "linux/arm64"),
            (&["unknown/unknown"][..], "linux/amd64"),
        ] {
            let err = pick(entries, want).unwrap_err();
            assert!(err.contains("no image for platform"), "{want}: {err}");
        }
        let err = pick(&["linux/amd64", "linux/arm/v7"], "linux/riscv64").unwrap_err();
        assert!(
            err.contains("linux/riscv64") && err.contains("linux/arm/v7"),
            "{err}"
        );
    }

    #[test]
    fn parses_and_detects() {
        assert_eq!(
            Platform::parse("linux/arm/v6").unwrap(),
            Platform {
                os: "linux".into(),
                architecture: "arm".into(),
                variant: Some("v6".into())
            }
        );
        assert_eq!(
            Platform::parse("linux/arm64").unwrap().variant.as_deref(),
            Some("v8")
        );
        assert_eq!(Platform::parse("linux/amd64").unwrap().variant, None);
        for bad in ["linux", "linux/", "a/b/c/d", "linux/am d64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        let cpuinfo = "processor\t: 0\nmodel name\t: ARMv6-compatible\nCPU architecture: 7\n";
        assert_eq!(arm_variant_from_cpuinfo(cpuinfo).as_deref(), Some("v6"));
        assert_eq!(
            arm_variant_from_cpuinfo("CPU architecture: 7\n").as_deref(),
            Some("v7")
        );
        assert_eq!(
            arm_variant_from_cpuinfo("CPU architecture: 6\n").as_deref(),
            Some("v6")
        );
        assert_eq!(arm_variant_from_cpuinfo("nothing\n"), None);
        let me = Platform::detect();
        assert_eq!(me.os, "linux");
        assert_eq!(me.architecture, oci::go_arch(std::env::consts::ARCH));
    }
}

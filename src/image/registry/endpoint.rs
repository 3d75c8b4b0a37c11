//! Where a reference is fetched from: mirrors first, then the registry itself (docker.io's API
//! lives at registry-1.docker.io), and over which scheme. Plain HTTP only for hosts the operator
//! listed as insecure and for loopback registries, and then only after HTTPS failed (Docker's
//! rule), so a loopback registry with TLS is still spoken to over TLS.

use std::net::Ipv4Addr;

use super::PullOptions;

pub(crate) const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Https,
    /// Explicitly configured (an `http://` mirror).
    Http,
    /// HTTPS, falling back to HTTP when the TLS connection cannot be made.
    HttpsThenHttp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// host[:port] that requests go to; credentials are looked up by it.
    pub host: String,
    /// A mirror's path prefix ("" or "/some/path", no trailing '/').
    pub prefix: String,
    pub scheme: Scheme,
    pub mirror: bool,
}

impl Endpoint {
    /// `<base>/v2/<repository>/<kind>/<reference>` with `base` = scheme://host + prefix.
    pub(crate) fn url(
        &self,
        scheme: &str,
        repository: &str,
        kind: &str,
        reference: &str,
    ) -> String {
        format!(
            "{scheme}://{}{}/v2/{repository}/{kind}/{reference}",
            self.host, self.prefix
        )
    }
}

/// The endpoints to try for a reference's `domain`, in order: the mirrors configured for it,
/// then the registry.
pub(crate) fn endpoints(domain: &str, opts: &PullOptions) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = opts
        .mirrors
        .get(domain)
        .into_iter()
        .flatten()
        .filter_map(|m| mirror(m, opts))
        .collect();
    let host = if domain == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        domain
    };
    out.push(Endpoint {
        host: host.to_string(),
        prefix: String::new(),
        scheme: default_scheme(host, opts),
        mirror: false,
    });
    out
}

fn mirror(url: &str, opts: &PullOptions) -> Option<Endpoint> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Some(Scheme::Https), rest),
        Some(("http", rest)) => (Some(Scheme::Http), rest),
        Some((other, _)) => {
            log::warn!("ignoring mirror {url:?}: unsupported scheme {other:?}");
            return None;
        }
        None => (None, url),
    };
    let (host, prefix) = match rest.split_once('/') {
        Some((h, p)) => (h, format!("/{}", p.trim_matches('/'))),
        None => (rest, String::new()),
    };
    if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
        log::warn!("ignoring mirror {url:?}: not a host[:port][/path] URL");
        return None;
    }
    let prefix = if prefix == "/" { String::new() } else { prefix };
    // A mirror URL's "/v2" suffix is how some configs spell the base; it is added per request.
    let prefix = prefix.strip_suffix("/v2").unwrap_or(&prefix).to_string();
    Some(Endpoint {
        host: host.to_string(),
        prefix,
        scheme: scheme.unwrap_or_else(|| default_scheme(host, opts)),
        mirror: true,
    })
}

fn default_scheme(host: &str, opts: &PullOptions) -> Scheme {
    let insecure = opts
        .insecure_registries
        .iter()
        .any(|h| h.trim_end_matches('/') == host);
    if insecure || is_loopback(host) {
        Scheme::HttpsThenHttp
    } else {
        Scheme::Https
    }
}

/// localhost and 127.0.0.0/8, with or without a port.
pub(crate) fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    name == "localhost" || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::super::{parse_target, PullOptions};
    use super::*;

    /// The first URL a pull of `reference` requests.
    fn manifest_url(reference: &str, opts: &PullOptions) -> (String, Scheme) {
        let t = parse_target(reference).unwrap();
        let e = &endpoints(&t.domain, opts)[0];
        (
            e.url("https", &t.repository, "manifests", &t.object),
            e.scheme,
        )
    }

    #[test]
    fn maps_references_to_endpoint_urls() {
        let d = format!("sha256:{}", "a".repeat(64));
        let none = PullOptions::default();
        for (reference, url, scheme) in [
            (
                "nginx",
                "https://registry-1.docker.io/v2/library/nginx/manifests/latest",
                Scheme::Https,
            ),
            (
                "nginx:1.25",
                "https://registry-1.docker.io/v2/library/nginx/manifests/1.25",
                Scheme::Https,
            ),
            (
                "index.docker.io/org/app:v1",
                "https://registry-1.docker.io/v2/org/app/manifests/v1",
                Scheme::Https,
            ),
            (
                "ghcr.io/a/b/c:t",
                "https://ghcr.io/v2/a/b/c/manifests/t",
                Scheme::Https,
            ),
            (
                "registry.local:5000/team/app",
                "https://registry.local:5000/v2/team/app/manifests/latest",
                Scheme::Https,
            ),
            (
                "localhost:5000/app:1",
                "https://localhost:5000/v2/app/manifests/1",
                Scheme::HttpsThenHttp,
            ),
            (
                "127.0.0.1:5000/app:1",
                "https://127.0.0.1:5000/v2/app/manifests/1",
                Scheme::HttpsThenHttp,
            ),
        ] {
            assert_eq!(
                manifest_url(reference, &none),
                (url.to_string(), scheme),
                "{reference}"
            );
        }
        // A digest wins over a tag.
        let (url, _) = manifest_url(&format!("busybox:1.36@{d}"), &none);
        assert_eq!(
            url,
            format!("https://registry-1.docker.io/v2/library/busybox/manifests/{d}")
        );

        let mut opts = PullOptions::default();
        opts.insecure_registries.push("registry.local:5000".into());
        opts.mirrors.insert(
            "docker.io".into(),
            vec![
                "https://mirror.local:5000".into(),
                "http://cache.lan/prefix/".into(),
                "ftp://nope".into(),
            ],
        );
        assert_eq!(
            manifest_url("registry.local:5000/x", &opts).1,
            Scheme::HttpsThenHttp
        );
        let t = parse_target("busybox").unwrap();
        let urls: Vec<(String, Scheme, bool)> = endpoints(&t.domain, &opts)
            .iter()
            .map(|e| {
                let scheme = if e.scheme == Scheme::Http {
                    "http"
                } else {
                    "https"
                };
                (
                    e.url(scheme, &t.repository, "blobs", &d),
                    e.scheme,
                    e.mirror,
                )
            })
            .collect();
        assert_eq!(
            urls,
            vec![
                (
                    format!("https://mirror.local:5000/v2/library/busybox/blobs/{d}"),
                    Scheme::Https,
                    true
                ),
                (
                    format!("http://cache.lan/prefix/v2/library/busybox/blobs/{d}"),
                    Scheme::Http,
                    true
                ),
                (
                    format!("https://registry-1.docker.io/v2/library/busybox/blobs/{d}"),
                    Scheme::Https,
                    false
                ),
            ]
        );
    }

    #[test]
    fn recognizes_loopback() {
        for h in ["localhost", "localhost:5000", "127.0.0.1", "127.1.2.3:80"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "localhost.example.com",
            "128.0.0.1",
            "10.0.0.1:5000",
            "example.com",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}

//! HTTP for registries: ureq agents with timeouts on every phase, capped redirects and the trust
//! roots; errors turned into messages that name what failed (DNS, refused, TLS, timeout).
//!
//! Trust: the built-in Mozilla roots, plus the system bundle and `--ca-file`s. ureq takes either
//! its built-in roots or a list of certificates, not both, so there are two agents and a
//! connection is trusted when either set verifies it: the built-in roots are tried first, the
//! extra set after a TLS failure, and the set that worked is remembered per host.
//!
//! Redirects (blob downloads go to S3/CDNs): ureq follows up to MAX_REDIRECTS and, by default,
//! drops the Authorization header on every redirect, so registry tokens never reach the CDN.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use ureq::http::Response;
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::{Agent, Body};

use crate::image::ImageError;

const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const MAX_REDIRECTS: u32 = 5;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) struct Transport {
    /// One agent per trust set; [0] uses the built-in roots.
    agents: Vec<Agent>,
    /// host -> index into `agents` of the trust set that verified it.
    trusted_by: Mutex<HashMap<String, usize>>,
}

/// A failed request, classified so callers can decide on an HTTP fallback.
#[derive(Debug)]
pub(crate) struct NetError {
    pub kind: NetErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetErrorKind {
    /// DNS failure, refused or unreachable: nothing answered.
    Connect,
    /// Something answered, but not with TLS (a plain-HTTP server, a reset during the handshake).
    Tls,
    /// A TLS server whose certificate we do not trust: never a reason to try plain HTTP.
    Certificate,
    Other,
}

impl Transport {
    pub(crate) fn new(ca_files: &[PathBuf]) -> Result<Transport, ImageError> {
        let mut extra = Vec::new();
        if Path::new(SYSTEM_BUNDLE).is_file() {
            match read_pem_certs(Path::new(SYSTEM_BUNDLE)) {
                Ok(certs) => extra.extend(certs),
                Err(e) => log::warn!("ignoring {SYSTEM_BUNDLE}: {e}"),
            }
        }
        for f in ca_files {
            let certs = read_pem_certs(f)?;
            if certs.is_empty() {
                return Err(ImageError::io(
                    "reading CA certificates from",
                    f,
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "no PEM certificates"),
                ));
            }
            extra.extend(certs);
        }
        let mut agents = vec![agent(RootCerts::WebPki)];
        if !extra.is_empty() {
            agents.push(agent(RootCerts::new_with_certs(&extra)));
        }
        Ok(Transport {
            agents,
            trusted_by: Mutex::new(HashMap::new()),
        })
    }

    /// GET `url` with `headers`; any HTTP status is an Ok response.
    pub(crate) fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response<Body>, NetError> {
        let host = host_of(url);
        let first = self
            .trusted_by
            .lock()
            .map(|m| m.get(host).copied().unwrap_or(0))
            .unwrap_or(0);
        let mut order: Vec<usize> = (0..self.agents.len()).collect();
        let rotate = first.min(order.len().saturating_sub(1));
        order.rotate_left(rotate);
        let mut last = None;
        for i in order {
            let mut req = self.agents[i].get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            match req.call() {
                Ok(resp) => {
                    if i != first {
                        if let Ok(mut m) = self.trusted_by.lock() {
                            m.insert(host.to_string(), i);
                        }
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    let err = classify(e);
                    // Only a certificate failure can depend on the trust set.
                    if err.kind != NetErrorKind::Certificate {
                        return Err(err);
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or(NetError {
            kind: NetErrorKind::Other,
            message: "no agent".to_string(),
        }))
    }
}

fn agent(roots: RootCerts) -> Agent {
    let tls = TlsConfig::builder().root_certs(roots).build();
    Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(MAX_REDIRECTS)
        .user_agent(concat!("tinylet/", env!("CARGO_PKG_VERSION")))
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_send_request(Some(READ_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        .timeout_per_read(Some(READ_TIMEOUT))
        .tls_config(tls)
        .build()
        .new_agent()
}

fn read_pem_certs(path: &Path) -> Result<Vec<Certificate<'static>>, ImageError> {
    let bytes =
        std::fs::read(path).map_err(|e| ImageError::io("reading CA certificates from", path, e))?;
    crate::tls::pem_certificates(&bytes).map_err(|e| {
        ImageError::io(
            "parsing CA certificates in",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

/// The authority of an http(s) URL ("host:port"), for per-host memory.
pub(crate) fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

fn classify(e: ureq::Error) -> NetError {
    use std::io::ErrorKind as K;
    let (kind, message) = match &e {
        ureq::Error::HostNotFound => (
            NetErrorKind::Connect,
            "cannot resolve the host name (DNS)".to_string(),
        ),
        ureq::Error::ConnectionFailed => (NetErrorKind::Connect, "connection failed".to_string()),
        // std's resolver reports failures as a plain io::Error ("failed to lookup address").
        ureq::Error::Io(io) if io.to_string().contains("lookup address") => (
            NetErrorKind::Connect,
            format!("cannot resolve the host name (DNS): {io}"),
        ),
        // rustls reports a rejected certificate through the TLS stream as an io::Error
        // (InvalidData, "invalid peer certificate: UnknownIssuer").
        ureq::Error::Io(io) if io.to_string().contains("certificate") => (
            NetErrorKind::Certificate,
            format!("TLS handshake failed: {io} (for a private CA pass --ca-file)"),
        ),
        // A plain-HTTP server answers the TLS hello with an HTTP response, which rustls reports
        // as a corrupt record: the server does not speak TLS.
        ureq::Error::Io(io) if io.to_string().contains("corrupt message") => (
            NetErrorKind::Tls,
            format!("the server does not speak TLS: {io}"),
        ),
        ureq::Error::Io(io) => match io.kind() {
            K::ConnectionRefused => (NetErrorKind::Connect, "connection refused".to_string()),
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                (NetErrorKind::Connect, format!("unreachable: {io}"))
            }
            // A plain-HTTP server answering a TLS hello often just hangs up.
            K::ConnectionReset | K::UnexpectedEof | K::ConnectionAborted => {
                (NetErrorKind::Tls, format!("connection closed: {io}"))
            }
            _ => (NetErrorKind::Other, format!("network error: {io}")),
        },
        ureq::Error::Timeout(t) => (
            if matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve) {
                NetErrorKind::Connect
            } else {
                NetErrorKind::Other
            },
            format!("timed out ({t})"),
        ),
        // rustls::Error is not part of ureq's API; its Display is the stable thing to read.
        ureq::Error::Rustls(r) if r.to_string().contains("certificate") => (
            NetErrorKind::Certificate,
            format!("TLS handshake failed: {r} (for a private CA pass --ca-file)"),
        ),
        ureq::Error::Rustls(r) => (NetErrorKind::Tls, format!("TLS handshake failed: {r}")),
        ureq::Error::Tls(t) => (NetErrorKind::Tls, format!("TLS failed: {t}")),
        ureq::Error::TooManyRedirects => (
            NetErrorKind::Other,
            format!("more than {MAX_REDIRECTS} redirects"),
        ),
        other => (NetErrorKind::Other, other.to_string()),
    };
    NetError { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_urls() {
        assert_eq!(host_of("https://r:5000/v2/x"), "r:5000");
        assert_eq!(host_of("http://a.b?x=1"), "a.b");
    }

    #[test]
    fn refused_connections_are_classified() {
        // Bind then drop a listener: the port is (almost certainly) closed right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let t = Transport::new(&[]).unwrap();
        let err = t
            .get(&format!("http://127.0.0.1:{port}/v2/"), &[])
            .unwrap_err();
        assert_eq!(err.kind, NetErrorKind::Connect, "{}", err.message);
        assert!(err.message.contains("refused"), "{}", err.message);
        assert!(Transport::new(&[PathBuf::from("/nonexistent/ca.pem")]).is_err());
    }
}

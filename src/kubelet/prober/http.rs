//! `httpGet` probes as the kubelet runs them: HTTP/1.1 GET, success for a status in 200..400,
//! redirects followed to the same host name only (up to 10 requests; a redirect elsewhere ends
//! the probe with the redirect itself, a success), and HTTPS without certificate verification
//! (the kubelet's probes set InsecureSkipVerify: a probe checks liveness, not identity).

use super::connect;
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Go's http.Client stops after 10 requests.
const MAX_REQUESTS: usize = 10;
/// The status line and headers we read at most.
pub(super) const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub path: String,
}

impl Url {
    pub fn show(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "{}://{}:{}{}",
            if self.https { "https" } else { "http" },
            host,
            self.port,
            self.path
        )
    }

    /// Where a `Location` header points, relative to this URL.
    pub fn join(&self, location: &str) -> Result<Url, String> {
        let loc = location.trim();
        let (https, rest) = if let Some(r) = loc.strip_prefix("https://") {
            (true, Some(r))
        } else if let Some(r) = loc.strip_prefix("http://") {
            (false, Some(r))
        } else if let Some(r) = loc.strip_prefix("//") {
            (self.https, Some(r))
        } else {
            (self.https, None)
        };
        let Some(rest) = rest else {
            // A path: absolute, or relative to the current one's directory.
            let path = if loc.starts_with('/') {
                loc.to_string()
            } else {
                let base = self.path.split('?').next().unwrap_or("/");
                let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
                format!("{}{}", if dir.is_empty() { "/" } else { dir }, loc)
            };
            return Ok(Url {
                path,
                ..self.clone()
            });
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let default_port = if https { 443 } else { 80 };
        let bad = || format!("bad redirect location {:?}", location);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None => default_port,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Url {
            https,
            host,
            port,
            path,
        })
    }
}

/// One probe: the request, and the redirects the kubelet follows.
pub(super) fn probe(
    first: Url,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut url = first.clone();
    for n in 1..=MAX_REQUESTS {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                format!(
                    "Get \"{}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
                    url.show()
                )
            })?;
        let (status, location) =
            get(&url, headers, left).map_err(|e| format!("Get \"{}\": {}", url.show(), e))?;
        let redirect = matches!(status, 301 | 302 | 303 | 307 | 308);
        if let (true, Some(loc)) = (redirect, location) {
            let next = url.join(&loc)?;
            // Another host: the redirect is the answer (a 3xx, so a success with a warning).
            if next.host != first.host {
                log::debug!("probe: not following redirect to {}", next.show());
                return Ok(());
            }
            if n == MAX_REQUESTS {
                return Err(format!(
                    "Get \"{}\": stopped after {} redirects",
                    next.show(),
                    MAX_REQUESTS
                ));
            }
            url = next;
            continue;
        }
        return if (200..400).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {}", status))
        };
    }
    unreachable!("the loop returns by its last request")
}

/// One GET: the status and the Location header.
fn get(
    url: &Url,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(u16, Option<String>), String> {
    let conn = connect(Some(&url.host), url.port, timeout)?;
    let _ = conn.set_read_timeout(Some(timeout));
    let _ = conn.set_write_timeout(Some(timeout));
    let host_header = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| {
            if url.host.contains(':') {
                format!("[{}]:{}", url.host, url.port)
            } else {
                format!("{}:{}", url.host, url.port)
            }
        });
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\nConnection: close\r\n",
        url.path, host_header
    );
    for (k, v) in headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
    {
        req.push_str(&format!("{}: {}\r\n", k, v));
    }
    req.push_str("\r\n");
    let head = if url.https {
        let server_name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("TLS server name {:?}: {}", url.host, e))?;
        let tls = rustls::ClientConnection::new(tls_config()?, server_name)
            .map_err(|e| format!("TLS: {}", e))?;
        exchange(&mut rustls::StreamOwned::new(tls, conn), &req)?
    } else {
        let mut conn = conn;
        exchange(&mut conn, &req)?
    };
    parse_head(&head)
}

pub(super) fn exchange<S: Read + Write>(stream: &mut S, req: &str) -> Result<Vec<u8>, String> {
    stream
        .write_all(req.as_bytes())
        .and_then(|_| stream.flush())
        .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while head.len() < MAX_HEAD {
        // Only the new bytes (and the 3 before them) are searched for the end of the head: a
        // container answering a byte at a time would otherwise cost quadratic time.
        let from = head.len().saturating_sub(3);
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if head.is_empty() => return Err(e.to_string()),
            Err(_) => break,
        }
        if head[from..].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    Ok(head)
}

/// The status code and `Location` of a response head.
pub(super) fn parse_head(head: &[u8]) -> Result<(u16, Option<String>), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .filter(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("malformed HTTP response")?;
    let location = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.trim().to_string());
    Ok((status, location))
}

/// The probes' TLS client configuration, made once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// Accepts any server certificate: the kubelet's HTTPS probes use InsecureSkipVerify, so a
/// container with a self-signed or expired certificate (or one for another name) still passes.
/// This exception is for probes only; the registry and API clients verify as usual. The
/// handshake's signature is still checked against the certificate's key, as Go does.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn url(path: &str, port: u16) -> Url {
        Url {
            https: false,
            host: "127.0.0.1".into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn locations_resolve_like_a_browser() {
        let u = url("/a/b?x=1", 8080);
        assert_eq!(u.join("/c").unwrap().path, "/c");
        assert_eq!(u.join("c").unwrap().path, "/a/c");
        let abs = u.join("https://example.com/z?q").unwrap();
        assert_eq!(
            (abs.https, abs.host.as_str(), abs.port, abs.path.as_str()),
            (true, "example.com", 443, "/z?q")
        );
        let v6 = u.join("http://[::1]:81").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.path.as_str()),
            ("::1", 81, "/")
        );
        assert_eq!(u.join("//127.0.0.1:9/p").unwrap().port, 9);
        assert!(u.join("http://:80/").is_err());
        assert!(u.join("http://h:notaport/").is_err());
    }

    #[test]
    fn heads_parse_defensively() {
        assert_eq!(
            parse_head(b"HTTP/1.1 302 Found\r\nlocation: /x\r\n\r\n").unwrap(),
            (302, Some("/x".into()))
        );
        assert!(parse_head(b"garbage").is_err());
        assert!(parse_head(b"").is_err());
        assert!(parse_head(b"HTTP/1.1 99999 Nope\r\n\r\n").is_err());
    }

    /// A server answering each request from `answers` in turn.
    fn serve(answers: Vec<String>) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for (c, answer) in l.incoming().zip(answers) {
                let mut c = c.unwrap();
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf);
                let _ = c.write_all(answer.as_bytes());
            }
        });
        port
    }

    #[test]
    fn redirects_are_followed_to_the_same_host_only() {
        let t = Duration::from_secs(2);
        let port = serve(vec![
            "HTTP/1.1 302 Found\r\nLocation: /ok\r\n\r\n".into(),
            "HTTP/1.1 500 Oops\r\n\r\n".into(),
        ]);
        let e = probe(url("/", port), &[], t).unwrap_err();
        assert!(e.contains("500"), "{}", e);
        // To another host: the redirect itself is the (successful) answer.
        let port = serve(vec![
            "HTTP/1.1 301 Moved\r\nLocation: http://elsewhere.invalid/\r\n\r\n".into(),
        ]);
        probe(url("/", port), &[], t).unwrap();
        // A loop stops after 10 requests.
        let port = serve(vec![
            "HTTP/1.1 302 Found\r\nLocation: /again\r\n\r\n".into();
            10
        ]);
        let e = probe(url("/", port), &[], t).unwrap_err();
        assert!(e.contains("stopped after 10 redirects"), "{}", e);
    }
}

//! The HTTPS client for the Kubernetes API: JSON requests over one keep-alive ureq agent, with
//! timeouts on every phase, the kubeconfig's trust and credentials, and watch streams read
//! synchronously line by line from the response body.
//!
//! `tls-server-name` is done with a resolver: requests go to `https://<tls-server-name>:<port>`
//! (so rustls checks the certificate against that name and sends it as SNI) and the resolver maps
//! that name to the addresses of the kubeconfig's real server host.
//!
//! The client certificate can be swapped at run time (certificate rotation): requests already in
//! flight finish on the old agent; the next ones use the new one.

use super::kubeconfig::Connection;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};
use ureq::http::Uri;
use ureq::tls::{ClientCert, PemItem, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use ureq::{Agent, Body};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Any ordinary request: the kubelet's client uses no total timeout, but a hung API server must
/// not hang a loop (the lease must be renewed well within its 40 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A LIST of every pod of a node (110 pods), or any one object (etcd keeps them under 1.5 MiB),
/// is far below this. The answer is buffered whole, so this is also the most memory one hostile
/// or broken answer can take (it was 64 MiB: +64 MiB RSS against an oversized body).
const MAX_BODY: u64 = 16 << 20;
/// One watch event (one object) is far below this.
const MAX_EVENT: usize = 16 << 20;
/// How long client-go keeps a token file's content before reading it again.
const TOKEN_FILE_TTL: Duration = Duration::from_secs(60);

/// A failed API call.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// The server answered with an error status (and usually a `Status` object).
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer: DNS, refused, TLS, timeout, a broken connection.
    Transport(String),
    /// An answer that is not the JSON it should be.
    Decode(String),
}

impl ApiError {
    pub fn code(&self) -> Option<u16> {
        match self {
            ApiError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }
    /// "Expired"/"Gone": a resourceVersion too old to watch from.
    pub fn is_expired(&self) -> bool {
        self.code() == Some(410)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Status {
                code,
                reason,
                message,
            } => {
                if message.is_empty() {
                    write!(f, "{} {}", code, reason)
                } else {
                    write!(f, "{} {}: {}", code, reason, message)
                }
            }
            ApiError::Transport(m) => write!(f, "cannot reach the API server: {}", m),
            ApiError::Decode(m) => write!(f, "unreadable answer from the API server: {}", m),
        }
    }
}

/// The patch flavours the API server takes (the Content-Type says which).
#[derive(Debug, Clone, Copy)]
pub enum PatchKind {
    Strategic,
}

impl PatchKind {
    fn content_type(self) -> &'static str {
        match self {
            PatchKind::Strategic => "application/strategic-merge-patch+json",
        }
    }
}

pub struct ApiClient {
    conn: Connection,
    /// `https://<host>:<port><prefix>` requests are sent to (see the module doc for tls-server-name).
    base: String,
    agent: RwLock<Agent>,
    token: RwLock<Option<(String, Instant)>>,
    /// Unix time of the last answer from the server (any HTTP status): how long the node has
    /// been cut off, for `--offline-max-age`.
    last_contact: AtomicU64,
}

impl ApiClient {
    pub fn new(conn: Connection) -> Result<ApiClient, String> {
        if conn.insecure_skip_tls_verify {
            log::warn!(
                "the kubeconfig sets insecure-skip-tls-verify: the API server's certificate is NOT checked"
            );
        }
        let base = match &conn.tls_server_name {
            Some(name) => with_host(&conn.server, name)?,
            None => conn.server.clone(),
        };
        let agent = build_agent(
            &conn,
            conn.client_cert_pem.as_deref(),
            conn.client_key_pem.as_deref(),
        )?;
        Ok(ApiClient {
            conn,
            base,
            agent: RwLock::new(agent),
            token: RwLock::new(None),
            last_contact: AtomicU64::new(0),
        })
    }

    pub fn server(&self) -> &str {
        &self.conn.server
    }

    /// Unix time of the last answer from the API server (0: none yet).
    pub fn last_contact(&self) -> u64 {
        self.last_contact.load(Ordering::Relaxed)
    }

    /// Carries the last contact over from an earlier run (it is persisted by the caller).
    pub fn set_last_contact(&self, unix: u64) {
        self.last_contact.fetch_max(unix, Ordering::Relaxed);
    }

    /// Uses a new client certificate from now on (rotation); checks the pair first.
    pub fn set_client_cert(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
        let agent = build_agent(&self.conn, Some(cert_pem), Some(key_pem))?;
        match self.agent.write() {
            Ok(mut a) => *a = agent,
            Err(p) => *p.into_inner() = agent,
        }
        Ok(())
    }

    fn agent(&self) -> Agent {
        match self.agent.read() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn bearer(&self) -> Option<String> {
        if let Some(t) = &self.conn.token {
            return Some(format!("Bearer {}", t));
        }
        let file = self.conn.token_file.as_ref()?;
        if let Ok(cached) = self.token.read() {
            if let Some((t, at)) = cached.as_ref() {
                if at.elapsed() < TOKEN_FILE_TTL {
                    return Some(format!("Bearer {}", t));
                }
            }
        }
        match std::fs::read_to_string(file) {
            Ok(t) => {
                let t = t.trim().to_string();
                if let Ok(mut cached) = self.token.write() {
                    *cached = Some((t.clone(), Instant::now()));
                }
                Some(format!("Bearer {}", t))
            }
            Err(e) => {
                log::warn!("reading tokenFile {}: {}", file.display(), e);
                None
            }
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.request("GET", path, None, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.request("POST", path, Some(("application/json", body)), None)
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.request("PUT", path, Some(("application/json", body)), None)
    }

    pub fn patch(&self, path: &str, kind: PatchKind, body: &Value) -> Result<Value, ApiError> {
        self.request("PATCH", path, Some((kind.content_type(), body)), None)
    }

    /// DELETE with `DeleteOptions` (grace period, preconditions).
    pub fn delete(&self, path: &str, options: &Value) -> Result<Value, ApiError> {
        self.request("DELETE", path, Some(("application/json", options)), None)
    }

    /// Opens a watch (`path` carries `watch=true` and its query); the stream ends when the
    /// server closes it (after its timeoutSeconds) or when nothing arrived for `idle`.
    pub fn watch(&self, path: &str, idle: Duration) -> Result<WatchStream, ApiError> {
        let resp = self.send("GET", path, None, Some(idle))?;
        let status = resp.status().as_u16();
        if status >= 300 {
            return Err(status_error(status, resp.into_body()));
        }
        Ok(WatchStream::from_reader(resp.into_body().into_reader()))
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &Value)>,
        read_timeout: Option<Duration>,
    ) -> Result<Value, ApiError> {
        let resp = self.send(method, path, body, read_timeout)?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if status >= 300 {
            return Err(status_error(status, body));
        }
        // An announced size over the cap is refused unread.
        if let Some(len) = body.content_length().filter(|l| *l > MAX_BODY) {
            return Err(ApiError::Decode(format!(
                "{} {}: an answer of {} bytes (more than {} MiB)",
                method,
                path,
                len,
                MAX_BODY >> 20
            )));
        }
        let bytes = body
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| {
                ApiError::Transport(format!("{} {}: reading the answer: {}", method, path, e))
            })?;
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Decode(format!("{} {}: {}", method, path, e)))
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &Value)>,
        read_timeout: Option<Duration>,
    ) -> Result<ureq::http::Response<Body>, ApiError> {
        let url = format!("{}{}", self.base, path);
        let agent = self.agent();
        let auth = self.bearer();
        let result = match body {
            None => {
                let mut req = agent.get(&url).header("Accept", "application/json");
                if let Some(idle) = read_timeout {
                    // A watch: open for as long as the server keeps it, but never silent for
                    // longer than `idle` (bookmarks arrive well within it).
                    req = req
                        .config()
                        .timeout_recv_body(None)
                        .timeout_per_read(Some(idle))
                        .build();
                }
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            Some((content_type, value)) => {
                let data = serde_json::to_vec(value)
                    .map_err(|e| ApiError::Decode(format!("encoding the request: {}", e)))?;
                let req = match method {
                    "POST" => agent.post(&url),
                    "PUT" => agent.put(&url),
                    "PATCH" => agent.patch(&url),
                    _ => agent.delete(&url).force_send_body(),
                };
                let mut req = req
                    .header("Accept", "application/json")
                    .header("Content-Type", content_type);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(&data[..])
            }
        };
        let resp = result
            .map_err(|e| ApiError::Transport(format!("{} {}: {}", method, self.conn.server, e)))?;
        self.last_contact
            .store(crate::clock::now_unix().as_secs(), Ordering::Relaxed);
        Ok(resp)
    }
}

/// A `Status` error body turned into an ApiError (a bare status when the body is not one).
fn status_error(code: u16, mut body: Body) -> ApiError {
    let bytes = body
        .with_config()
        .limit(1 << 20)
        .read_to_vec()
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let reason = v["reason"].as_str().map(str::to_string).unwrap_or_else(|| {
        ureq::http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error")
            .to_string()
    });
    let message = v["message"].as_str().unwrap_or_default().to_string();
    ApiError::Status {
        code,
        reason,
        message,
    }
}

/// One event of a watch stream.
#[derive(Debug)]
pub struct WatchEvent {
    /// ADDED, MODIFIED, DELETED, BOOKMARK or ERROR.
    pub kind: String,
    pub object: Value,
}

/// Events of a watch, one JSON object per line of the (chunked) response body.
pub struct WatchStream {
    reader: BufReader<Box<dyn Read + Send>>,
    line: Vec<u8>,
}

impl WatchStream {
    /// Decodes events from any byte stream (a response body; the fuzz targets' bytes).
    pub fn from_reader(body: impl Read + Send + 'static) -> WatchStream {
        WatchStream {
            reader: BufReader::with_capacity(16 * 1024, Box::new(body)),
            line: Vec::new(),
        }
    }

    /// The next event; `Ok(None)` when the server ended the stream cleanly.
    pub fn next_event(&mut self) -> Result<Option<WatchEvent>, ApiError> {
        loop {
            self.line.clear();
            let n = (&mut self.reader)
                .take(MAX_EVENT as u64 + 1)
                .read_until(b'\n', &mut self.line)
                .map_err(|e| ApiError::Transport(format!("reading the watch stream: {}", e)))?;
            if n == 0 {
                return Ok(None);
            }
            if self.line.len() > MAX_EVENT {
                return Err(ApiError::Decode(format!(
                    "a watch event larger than {} MiB",
                    MAX_EVENT >> 20
                )));
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(&self.line)
                .map_err(|e| ApiError::Decode(format!("a watch event: {}", e)))?;
            // Any JSON may come (found by fuzzing: `1` made the indexing below panic).
            let Value::Object(mut v) = v else {
                return Err(ApiError::Decode(
                    "a watch event that is not a JSON object".into(),
                ));
            };
            let kind = v
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let object = v.remove("object").unwrap_or(Value::Null);
            if kind == "ERROR" {
                return Err(ApiError::Status {
                    code: object["code"].as_u64().unwrap_or(500) as u16,
                    reason: object["reason"].as_str().unwrap_or("Error").to_string(),
                    message: object["message"].as_str().unwrap_or_default().to_string(),
                });
            }
            return Ok(Some(WatchEvent { kind, object }));
        }
    }
}

fn build_agent(
    conn: &Connection,
    cert_pem: Option<&[u8]>,
    key_pem: Option<&[u8]>,
) -> Result<Agent, String> {
    let roots = match &conn.ca_pem {
        Some(pem) => {
            let certs = crate::tls::pem_certificates(pem)
                .map_err(|e| format!("certificate-authority: {}", e))?;
            if certs.is_empty() {
                return Err("certificate-authority: no PEM certificates in it".into());
            }
            RootCerts::new_with_certs(&certs)
        }
        None => RootCerts::WebPki,
    };
    let mut tls = TlsConfig::builder()
        .root_certs(roots)
        .disable_verification(conn.insecure_skip_tls_verify);
    if let (Some(cert), Some(key)) = (cert_pem, key_pem) {
        let chain =
            crate::tls::pem_certificates(cert).map_err(|e| format!("client certificate: {}", e))?;
        if chain.is_empty() {
            return Err("client certificate: no PEM certificate in it".into());
        }
        let key = ureq::tls::parse_pem(key)
            .find_map(|item| match item {
                Ok(PemItem::PrivateKey(k)) => Some(k.to_owned()),
                _ => None,
            })
            .ok_or("client key: no PEM private key in it")?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("tinylet/", env!("CARGO_PKG_VERSION")))
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_send_request(Some(REQUEST_TIMEOUT))
        .timeout_send_body(Some(REQUEST_TIMEOUT))
        .timeout_recv_response(Some(REQUEST_TIMEOUT))
        .timeout_recv_body(Some(REQUEST_TIMEOUT))
        .tls_config(tls.build())
        .build();
    let resolver = match &conn.tls_server_name {
        Some(name) => NameResolver {
            alias: name.to_ascii_lowercase(),
            real: host_port(&conn.server)?,
        },
        None => NameResolver::default(),
    };
    Ok(Agent::with_parts(config, DefaultConnector::new(), resolver))
}

/// Resolves `alias` (the tls-server-name) to the real server host's addresses.
#[derive(Debug, Default)]
struct NameResolver {
    alias: String,
    /// The real server's "host:port".
    real: String,
}

impl Resolver for NameResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let is_alias = !self.alias.is_empty()
            && uri
                .host()
                .is_some_and(|h| h.eq_ignore_ascii_case(&self.alias));
        if !is_alias {
            return DefaultResolver::default().resolve(uri, config, timeout);
        }
        let real: Uri = format!("https://{}/", self.real)
            .parse()
            .map_err(|_| ureq::Error::HostNotFound)?;
        DefaultResolver::default().resolve(&real, config, timeout)
    }
}

/// "host:port" of an https URL (443 when the URL has none).
fn host_port(url: &str) -> Result<String, String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.is_empty() {
        return Err(format!("server {:?} has no host", url));
    }
    let has_port = match authority.rfind(']') {
        Some(i) => authority[i..].contains(':'),
        None => authority.contains(':'),
    };
    Ok(if has_port {
        authority.to_string()
    } else {
        format!("{}:443", authority)
    })
}

/// `url` with its host replaced by `host` (the port and path kept).
fn with_host(url: &str, host: &str) -> Result<String, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("server {:?} is not a URL", url))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let hp = host_port(&format!("{}://{}", scheme, authority))?;
    let port = hp.rsplit_once(':').map(|(_, p)| p).unwrap_or("443");
    Ok(format!("{}://{}:{}{}", scheme, host, port, path))
}

/// A path segment or query value, percent-encoded.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{:02X}", b));
        }
    }
    out
}

/// `resourceVersion` of an object or list.
pub fn resource_version(v: &Value) -> Option<&str> {
    v["metadata"]["resourceVersion"].as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(host_port("https://10.0.0.1:6443").unwrap(), "10.0.0.1:6443");
        assert_eq!(
            host_port("https://api.example/x").unwrap(),
            "api.example:443"
        );
        assert_eq!(host_port("https://[::1]:6443").unwrap(), "[::1]:6443");
        assert_eq!(host_port("https://[::1]").unwrap(), "[::1]:443");
        assert_eq!(
            with_host("https://10.0.0.1:6443/prefix", "kubernetes").unwrap(),
            "https://kubernetes:6443/prefix"
        );
        assert_eq!(
            with_host("https://10.0.0.1", "kubernetes").unwrap(),
            "https://kubernetes:443"
        );
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("spec.nodeName=n1"), "spec.nodeName%3Dn1");
        assert_eq!(escape("a-b_c.d~"), "a-b_c.d~");
    }
}

//! The node's local endpoints: the kubelet's plain-HTTP health check (healthz.rs,
//! 127.0.0.1:10248) and its HTTPS API on `--address:--port` (0.0.0.0:10250): `/healthz`,
//! `/pods`, `/containerLogs/...`, `/stats/summary`, `/metrics`, `/metrics/resource`, each
//! behind authentication (authn.rs) and authorization (authz.rs) as the kubelet's.
//!
//! Synchronous and small: a thread per connection up to `MAX_CONNECTIONS` (more are closed at
//! once), one request per connection, bounded request heads, read and write timeouts. The API is
//! called rarely on a device (the API server's `kubectl logs`, metrics-server every 15 s).

pub mod authn;
pub mod authz;
mod cache;
/// The fuzz target's entry point (see src/fuzzing.rs); not in the binary.
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz;
pub mod healthz;
pub mod http;
mod logs;
mod pods;
pub mod tls;

use http::{respond, status_json, Chunked, ReadError, Request};
use rustls::{ServerConnection, StreamOwned};
use serde_json::Value;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connections served at once; a follower of a quiet log holds one until the container ends or
/// a write to the client fails.
const MAX_CONNECTIONS: usize = 32;
/// Time to complete the TLS handshake and send the request head (each read, and in all).
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A client that stops reading for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The API server calls the node API makes: TokenReviews and SubjectAccessReviews (create-only
/// resources). A trait so that authn/authz are tested without a server.
pub trait Reviewer: Send + Sync {
    fn create(&self, path: &str, body: &Value) -> Result<Value, String>;
}

impl Reviewer for crate::kube::client::ApiClient {
    fn create(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.post(path, body).map_err(|e| e.to_string())
    }
}

pub struct Settings {
    pub address: String,
    pub port: u16,
    pub root_dir: PathBuf,
    pub pod_log_dir: PathBuf,
    pub tls: Arc<rustls::ServerConfig>,
    pub authn: authn::Authenticator,
    pub authz: authz::Authorizer,
    /// The bodies of `/stats/summary`, `/metrics` and `/metrics/resource` (`src/stats/`).
    pub stats: Arc<dyn crate::stats::StatsSource>,
}

/// Binds and serves in the background. A port already taken is a warning, not a failure of the
/// agent: pods matter more than the API.
pub fn start(settings: Settings) {
    let listener = match TcpListener::bind((settings.address.as_str(), settings.port)) {
        Ok(l) => l,
        Err(e) => {
            log::warn!(
                "node API: cannot listen on {}:{}: {}; the node API is off",
                settings.address,
                settings.port,
                e
            );
            return;
        }
    };
    log::info!(
        "node API: https://{}:{}",
        settings.address,
        listener.local_addr().map(|a| a.port()).unwrap_or(0)
    );
    let settings = Arc::new(settings);
    let active = Arc::new(AtomicUsize::new(0));
    let spawned = std::thread::Builder::new()
        .name("node-api".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    log::warn!(
                        "node API: {} connections open; refusing one",
                        MAX_CONNECTIONS
                    );
                    continue;
                }
                let (s, a) = (settings.clone(), active.clone());
                let ok = std::thread::Builder::new()
                    .name("node-api-conn".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        serve(&s, conn);
                        a.fetch_sub(1, Ordering::SeqCst);
                    });
                if ok.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("node API: starting its thread: {}", e);
    }
}

fn serve(settings: &Settings, tcp: TcpStream) {
    let _ = tcp.set_read_timeout(Some(READ_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(WRITE_TIMEOUT));
    let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let conn = match ServerConnection::new(settings.tls.clone()) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("node API: TLS: {}", e);
            return;
        }
    };
    let mut stream = StreamOwned::new(conn, tcp);
    let req = match Request::read(&mut stream, std::time::Instant::now() + READ_TIMEOUT) {
        Ok(r) => r,
        Err(ReadError::Closed) => {
            // A failed handshake (no certificate yet, an untrusted client certificate) lands
            // here too; rustls has already sent the alert.
            log::debug!("node API: connection from {} closed before a request", peer);
            return;
        }
        Err(ReadError::Bad(code, why)) => {
            let _ = respond(
                &mut stream,
                code,
                "text/plain; charset=utf-8",
                why.as_bytes(),
                false,
            );
            return;
        }
    };
    let client_cert = stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(tls::client_identity);
    let Some(user) = settings
        .authn
        .authenticate(client_cert, req.header("authorization"))
    else {
        log::debug!("node API: 401 {} {} from {}", req.method, req.path, peer);
        let body = status_json(401, "Unauthorized", "Unauthorized");
        let _ = respond(&mut stream, 401, "application/json", &body, false);
        return;
    };
    let attrs = authz::attributes(&req.method, &req.path);
    match settings.authz.authorize(&user, &attrs) {
        authz::Decision::Allow => {}
        authz::Decision::Deny(message) => {
            log::info!("node API: {} {}: {}", req.method, req.path, message);
            let body = status_json(403, "Forbidden", &message);
            let _ = respond(&mut stream, 403, "application/json", &body, false);
            return;
        }
        authz::Decision::Error(e) => {
            log::warn!("node API: {} {}: {}", req.method, req.path, e);
            let body = status_json(500, "InternalError", "Authorization error");
            let _ = respond(&mut stream, 500, "application/json", &body, false);
            return;
        }
    }
    log::debug!("node API: {} {} by {}", req.method, req.path, user.name);
    if let Err(e) = route(settings, &req, &mut stream) {
        log::debug!("node API: {} {}: {}", req.method, req.path, e);
    }
    let _ = stream.flush();
    stream.conn.send_close_notify();
    let _ = stream.flush();
}

fn route(settings: &Settings, req: &Request, out: &mut impl Write) -> std::io::Result<()> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json";
    let head = req.method == "HEAD";
    if req.method != "GET" && !head {
        let body = status_json(
            405,
            "MethodNotAllowed",
            "only GET is served by the node API",
        );
        return respond(out, 405, JSON, &body, false);
    }
    let path = req.path.as_str();
    let unavailable = |out: &mut dyn Write, why: String| {
        let body = status_json(503, "ServiceUnavailable", &why);
        respond(&mut WriteRef(out), 503, JSON, &body, head)
    };
    match path {
        "/healthz" => respond(out, 200, TEXT, b"ok", head),
        "/pods" | "/pods/" => respond(
            out,
            200,
            JSON,
            &pods::pod_list_json(&settings.root_dir),
            head,
        ),
        "/stats/summary" | "/stats/summary/" => match settings.stats.summary() {
            Ok(v) => respond(
                out,
                200,
                JSON,
                &serde_json::to_vec(&v).unwrap_or_default(),
                head,
            ),
            Err(e) => unavailable(out, e),
        },
        "/metrics" | "/metrics/resource" => {
            let text = if path == "/metrics" {
                settings.stats.metrics()
            } else {
                settings.stats.metrics_resource()
            };
            respond(
                out,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                text.as_bytes(),
                head,
            )
        }
        _ if path.starts_with("/containerLogs/") => {
            let options = match logs::options(req) {
                Ok(o) => o,
                Err(e) => return respond(out, 400, TEXT, e.as_bytes(), head),
            };
            let rest = &path["/containerLogs/".len()..];
            let stream = match logs::open(&settings.root_dir, &settings.pod_log_dir, rest, options)
            {
                Ok(s) => s,
                Err((code, e)) => return respond(out, code, TEXT, e.as_bytes(), head),
            };
            if head {
                return respond(out, 200, TEXT, b"", true);
            }
            let mut body = Chunked::start(WriteRef(out), TEXT)?;
            // An error after the headers can only end the stream (a client gone, a read error).
            if let Err(e) = stream.copy_to(&mut body) {
                log::debug!("node API: {}: {}", path, e);
                return Ok(());
            }
            body.finish()
        }
        _ if ["/exec/", "/attach/", "/portForward/", "/run/"]
            .iter()
            .any(|p| path.starts_with(p)) =>
        {
            let body = status_json(
                501,
                "NotImplemented",
                "exec, attach, port-forward and run are not supported by tinylet",
            );
            respond(out, 501, JSON, &body, head)
        }
        _ => respond(out, 404, TEXT, b"404 page not found\n", head),
    }
}

/// `&mut dyn Write` as a sized writer (Chunked and respond take `impl Write`).
struct WriteRef<'a>(&'a mut dyn Write);

impl Write for WriteRef<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

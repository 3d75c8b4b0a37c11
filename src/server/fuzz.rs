//! The node API's fuzz entry point (called from src/fuzzing.rs): one request as a client on
//! port 10250 sends it, through what the server does without the network — the head parser,
//! the authenticators' reading of `Authorization`, the authorization attributes and the router
//! (with `/containerLogs` options read against a pod with a real log on disk). Here because
//! `route` and the `logs` module are private to `server`.

use super::authn::Authenticator;
use super::authz::{self, Authorizer, Mode};
use super::http::{ReadError, Request, MAX_HEAD};
use super::{logs, route, Reviewer, Settings};
use crate::fuzzing::Feed;
use crate::kubelet::store::{self, Attempt, ContainerRecord, PodRecord};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The request reader's buffer: what it may hold beyond its cap after one read.
const READ_BUF: usize = 2048;

/// Lines of the fixture container's log (CRI format, all full lines).
const LOG_LINES: usize = 6;

/// Arbitrary bytes as one request; the same bytes repeated without end as a request that never
/// ends its head. Splitting the bytes into reads differently must not change the outcome.
pub(crate) fn request(data: &[u8]) {
    let far = Instant::now() + Duration::from_secs(3600);
    let whole = Request::read(&mut Feed::new(data, usize::MAX, false), far);
    let mut trickle = Feed::new(data, 3, false);
    let split = Request::read(&mut trickle, far);
    assert_eq!(
        format!("{:?}", whole),
        format!("{:?}", split),
        "the outcome depends on how the head was split into reads"
    );
    if !data.is_empty() {
        // A client that never stops sending: the reader must stop at its cap, with a 431 or a
        // head that ended within it, having read at most its cap and one buffer.
        for chunk in [usize::MAX, 3] {
            let mut endless = Feed::new(data, chunk, true);
            match Request::read(&mut endless, far) {
                Err(ReadError::Closed) => panic!("an endless client was taken for a closed one"),
                Err(ReadError::Bad(..)) | Ok(_) => {}
            }
            assert!(
                endless.given <= MAX_HEAD + 3 + READ_BUF,
                "{} bytes read from a client that never ends its head",
                endless.given
            );
        }
    }
    let Ok(req) = whole else {
        return;
    };
    assert!(!req.method.is_empty() && !req.method.contains(' '));
    assert!(req.path.starts_with('/'), "a path {:?}", req.path);
    assert!(req
        .headers
        .iter()
        .all(|(n, _)| *n == n.to_ascii_lowercase()));
    serve(&req);
}

/// What the server does with a parsed request once the TLS layer has given it over.
fn serve(req: &Request) {
    let fixture = fixture();
    let authorization = req.header("authorization");
    let webhook = Arc::new(Tokens::default());
    for anonymous in [false, true] {
        let authn = Authenticator::new(anonymous, Some(webhook.clone()));
        let user = authn.authenticate(None, authorization);
        // Every token reaching the API server came from a `Bearer` header, trimmed, not empty.
        for token in webhook.seen.lock().unwrap().drain(..) {
            let header = authorization.expect("a token reviewed without a header");
            let (scheme, rest) = header.split_once(' ').expect("a token without a scheme");
            assert!(scheme.eq_ignore_ascii_case("bearer"));
            assert_eq!(token, rest.trim());
            assert!(!token.is_empty());
            assert!(user.is_none(), "a token the API server rejected was let in");
        }
        if let Some(u) = user {
            assert_eq!(u.name, "system:anonymous");
        }
    }
    let attrs = authz::attributes(&req.method, &req.path);
    assert!(!attrs.subresources.is_empty());

    let mut out = Vec::new();
    let _ = route(&fixture.settings, req, &mut out);
    let (status, chunked, body) = response(&out);
    let head_only = req.method == "HEAD";
    assert!(!head_only || body.is_empty(), "a HEAD answer with a body");
    if !req.path.starts_with("/containerLogs/") || !matches!(&*req.method, "GET" | "HEAD") {
        assert!(!chunked);
        return;
    }
    match logs::options(req) {
        Err(_) => assert_eq!(status, 400),
        Ok(options) => {
            if req.path == "/containerLogs/default/web/c" {
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
            }
            if status != 200 {
                // A 400 or 404 with its reason: the options bound a log, not an error.
                assert!(!chunked);
                return;
            }
            if let Some(limit) = options.limit_bytes {
                assert!(body.len() as u64 <= limit, "limitBytes={} exceeded", limit);
            }
            let lines = body.iter().filter(|b| **b == b'\n').count();
            assert!(lines <= LOG_LINES);
            if let Some(tail) = options.tail_lines {
                assert!(lines as u64 <= tail, "tailLines={}: {} lines", tail, lines);
            }
        }
    }
}

/// The status, whether the body was chunked, and the body (de-chunked) of a whole response.
fn response(out: &[u8]) -> (u16, bool, Vec<u8>) {
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response without the end of its head");
    let head = std::str::from_utf8(&out[..end]).expect("a response head that is not UTF-8");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|s| s.parse().ok())
        .expect("a malformed status line");
    let mut body = out[end + 4..].to_vec();
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(": ").expect("a malformed response header");
        if name == "Transfer-Encoding" {
            chunked = value == "chunked";
        }
        if name == "Content-Length" && !body.is_empty() {
            assert_eq!(value.parse::<usize>().ok(), Some(body.len()));
        }
    }
    if chunked {
        body = dechunk(&body);
    }
    (status, chunked, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .expect("a chunk size");
        b = &b[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        assert_eq!(&b[size..size + 2], b"\r\n");
        b = &b[size + 2..];
    }
}

/// The API server's TokenReview: remembers the token and rejects it.
#[derive(Default)]
struct Tokens {
    seen: Mutex<Vec<String>>,
}

impl Reviewer for Tokens {
    fn create(&self, _path: &str, body: &Value) -> Result<Value, String> {
        let token = body["spec"]["token"].as_str().unwrap_or_default();
        self.seen.lock().unwrap().push(token.to_string());
        Ok(json!({"status": {"authenticated": false}}))
    }
}

struct NoStats;

impl crate::stats::StatsSource for NoStats {
    fn summary(&self) -> Result<Value, String> {
        Ok(json!({"node": {"nodeName": "node-1"}, "pods": []}))
    }
    fn metrics(&self) -> String {
        "# no metrics\n".into()
    }
    fn metrics_resource(&self) -> String {
        String::new()
    }
}

/// A server without a certificate (no handshake happens here).
#[derive(Debug)]
struct NoCert;

impl rustls::server::ResolvesServerCert for NoCert {
    fn resolve(&self, _: rustls::server::ClientHello) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

struct Fixture {
    settings: Settings,
}

/// The server's settings over a root directory with one pod, `default/web`, whose container
/// `c` has exited once and again (nothing to follow), each time after writing LOG_LINES lines.
/// Made once per process, at a fixed place (rewritten whole, so a run never litters /tmp).
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = std::env::temp_dir().join("tinylet-fuzz-node-api");
        let (root, log_dir) = (base.join("root"), base.join("logs"));
        let uid = "0a1b2c3d-0000-4000-8000-000000000001";
        let pod_dir = store::pods_dir(&root).join(uid);
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "busybox"}],
                     "initContainers": [{"name": "init", "image": "busybox"}]},
        });
        store::save_pod(
            &pod_dir,
            &PodRecord {
                version: store::VERSION,
                object: Arc::new(object),
                source: PathBuf::from("api"),
                start_time: None,
                initialized: true,
                evicted: None,
            },
        )
        .expect("writing the fixture pod");
        for (name, restarts) in [("c", 1), ("init", 0)] {
            store::save_container(
                &pod_dir,
                &ContainerRecord {
                    version: store::VERSION,
                    name: name.into(),
                    restart_count: restarts,
                    started_once: true,
                    current: None::<Attempt>,
                    ..Default::default()
                },
            )
            .expect("writing the fixture container");
        }
        let dir = log_dir.join(format!("default_web_{}", uid)).join("c");
        std::fs::create_dir_all(&dir).expect("the fixture log directory");
        let mut log = String::new();
        for i in 0..LOG_LINES {
            log.push_str(&format!(
                "2026-01-01T00:00:0{}.000000000Z stdout F line {}\n",
                i, i
            ));
        }
        for n in 0..2 {
            // Renamed into place: another process replaying the corpus may be reading it.
            let tmp = dir.join(format!(".{}.log.{}", n, std::process::id()));
            std::fs::write(&tmp, &log).expect("the fixture log");
            std::fs::rename(&tmp, dir.join(format!("{}.log", n))).expect("the fixture log");
        }
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCert));
        Fixture {
            settings: Settings {
                address: "127.0.0.1".into(),
                port: 0,
                root_dir: root,
                pod_log_dir: log_dir,
                tls: Arc::new(tls),
                authn: Authenticator::new(false, None),
                authz: Authorizer::new(Mode::AlwaysAllow, "node-1".into()),
                stats: Arc::new(NoStats),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixture serves what the target's assertions are about (so they are not vacuous).
    #[test]
    fn the_fixture_pod_has_a_log() {
        let answer = |raw: &[u8]| {
            let req = Request::read(&mut &raw[..], Instant::now() + Duration::from_secs(9));
            let mut out = Vec::new();
            route(&fixture().settings, &req.unwrap(), &mut out).unwrap();
            response(&out)
        };
        let (status, chunked, body) =
            answer(b"GET /containerLogs/default/web/c?tailLines=2 HTTP/1.1\r\n\r\n");
        assert_eq!((status, chunked), (200, true));
        assert_eq!(String::from_utf8(body).unwrap(), "line 4\nline 5\n");
        let (status, _, body) =
            answer(b"GET /containerLogs/default/web/c?previous=1&limitBytes=3 HTTP/1.1\r\n\r\n");
        assert_eq!((status, body.as_slice()), (200, &b"lin"[..]));
        let (status, _, _) = answer(b"GET /containerLogs/default/web/nope HTTP/1.1\r\n\r\n");
        assert_eq!(status, 404);
        request(b"GET /containerLogs/default/web/c?tailLines=2 HTTP/1.1\r\n\r\n");
    }
}

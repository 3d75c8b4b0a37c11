//! The probes' fuzz entry point (called from src/fuzzing.rs): what a container sends back to a
//! probe, as the gRPC probe's HTTP/2 server, as an HPACK header block, and as the httpGet
//! probe's HTTP server. Here because those readers are private to `prober`.

use super::grpc::{self, Failure};
use super::{hpack, http};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The same bytes through each reader; none may panic, and each stays within its bounds.
pub(crate) fn response(data: &[u8]) {
    hpack_block(data);
    grpc_server(data);
    http_server(data);
}

/// One header block, then the same bytes again against the table the first left behind.
fn hpack_block(data: &[u8]) {
    let mut d = hpack::Decoder::default();
    for _ in 0..2 {
        if let Ok(fields) = d.decode(data) {
            let list: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 32).sum();
            assert!(list <= hpack::MAX_LIST, "a header list of {} bytes", list);
        }
    }
}

/// A gRPC health server that sends `data` (in 7-byte reads, as a trickling server would).
fn grpc_server(data: &[u8]) {
    let mut server = Server::new(data, 7, false);
    let deadline = Instant::now() + Duration::from_secs(3600);
    let request = match grpc::call(&mut server, "127.0.0.1:9", "svc", deadline) {
        Ok(answer) => {
            assert!(answer
                .message
                .as_ref()
                .is_none_or(|m| m.len() <= grpc::MAX_MESSAGE));
            if let Err(e) = grpc::verdict(&answer, Duration::from_secs(1)) {
                assert!(!e.is_empty());
            }
            server.written
        }
        Err(Failure::Protocol(e)) => {
            assert!(!e.is_empty());
            server.written
        }
        Err(Failure::Io(_)) => server.written,
        Err(Failure::Deadline) => panic!("a deadline an hour away passed"),
    };
    // The client answers PINGs and SETTINGS (17 bytes each at most), nothing else.
    assert!(
        request <= 1024 + grpc::MAX_FRAMES * 17,
        "{} bytes written",
        request
    );
    let _ = grpc::health_status(data);
}

/// The httpGet probe reading `data` as its answer (whole and trickled), then following its
/// `Location`; and an answer whose head never ends.
fn http_server(data: &[u8]) {
    let req = "GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:8080\r\n\r\n";
    let whole = http::exchange(&mut Server::new(data, usize::MAX, false), req);
    let trickled = http::exchange(&mut Server::new(data, 3, false), req);
    let head = whole.expect("a read from a slice failed");
    let parsed = http::parse_head(&head);
    let trickled = trickled.expect("a read from a slice failed");
    // Where the reads split the answer may change how much of it is read past the end of the
    // head (or past the cap), not what the head says.
    if data.len() < http::MAX_HEAD {
        assert_eq!(parsed, http::parse_head(&trickled));
    }
    if let Ok((_, Some(location))) = parsed {
        let here = http::Url {
            https: false,
            host: "10.0.0.1".into(),
            port: 8080,
            path: "/a/healthz?x=1".into(),
        };
        if let Ok(next) = here.join(&location) {
            assert!(!next.host.is_empty());
            assert!(next.path.starts_with('/'), "a path {:?}", next.path);
            let _ = next.show();
        }
    }
    if !data.is_empty() {
        for chunk in [usize::MAX, 3] {
            let mut endless = Server::new(data, chunk, true);
            let head = http::exchange(&mut endless, req).expect("a read from a slice failed");
            assert!(
                head.len() < http::MAX_HEAD + 1024,
                "a head of {} bytes",
                head.len()
            );
        }
    }
}

/// A server sending `data` `chunk` bytes at a time, then EOF (or again and again when
/// `endless`); what the client writes is counted.
struct Server<'a> {
    data: &'a [u8],
    at: usize,
    chunk: usize,
    endless: bool,
    written: usize,
}

impl<'a> Server<'a> {
    fn new(data: &'a [u8], chunk: usize, endless: bool) -> Server<'a> {
        Server {
            data,
            at: 0,
            chunk,
            endless,
            written: 0,
        }
    }
}

impl Read for Server<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.data.len() {
            if !self.endless {
                return Ok(0);
            }
            self.at = 0;
        }
        let n = buf.len().min(self.chunk).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Server<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

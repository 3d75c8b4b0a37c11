//! The probes' fuzz entry point (called from src/fuzzing.rs): what a container sends back to a
//! probe, as the gRPC probe's HTTP/2 server, as an HPACK header block, and as the httpGet
//! probe's HTTP server. Here because those readers are private to `prober`.

use super::grpc::{self, Failure};
use super::{hpack, http};
use crate::fuzzing::Feed;
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
    let mut server = Feed::new(data, 7, false);
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
    let whole = http::exchange(&mut Feed::new(data, usize::MAX, false), req);
    let trickled = http::exchange(&mut Feed::new(data, 3, false), req);
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
            let mut endless = Feed::new(data, chunk, true);
            let head = http::exchange(&mut endless, req).expect("a read from a slice failed");
            assert!(
                head.len() < http::MAX_HEAD + 1024,
                "a head of {} bytes",
                head.len()
            );
        }
    }
}

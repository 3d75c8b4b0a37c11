//! The little HTTP/1.1 the node API needs: one GET-style request per connection (head only, with
//! a size bound), answers with a Content-Length or chunked (log follow), then the connection
//! closes. No keep-alive: the API is called rarely, and a closed connection frees its thread.

use std::io::{self, Read, Write};
use std::time::Instant;

/// Request heads beyond this are refused (431), as Go's server refuses headers over 1 MiB; ours
/// is smaller because nothing legitimate sends more than a token and a few headers.
pub const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoded.
    pub path: String,
    pub query: Vec<(String, String)>,
    /// Names lowercased.
    pub headers: Vec<(String, String)>,
}

/// Why a request could not be read; the status to answer with, if any.
#[derive(Debug)]
pub enum ReadError {
    /// The client went away or timed out: nothing to answer.
    Closed,
    Bad(u16, &'static str),
}

impl Request {
    /// Reads the request head; a client still sending it at `deadline` is dropped (a
    /// byte-at-a-time sender would otherwise hold a connection for as long as it likes).
    pub fn read(stream: &mut impl Read, deadline: Instant) -> Result<Request, ReadError> {
        let mut head = Vec::with_capacity(1024);
        let mut buf = [0u8; 2048];
        let end = loop {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => return Err(ReadError::Closed),
                Ok(n) => n,
            };
            // Only the new bytes (and the 3 before them, for a terminator split between two
            // reads) are searched: rescanning the whole head on every read made a sender of
            // one byte per TLS record cost quadratic time.
            let from = head.len().saturating_sub(3);
            head.extend_from_slice(&buf[..n]);
            if Instant::now() >= deadline {
                return Err(ReadError::Closed);
            }
            if let Some(i) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
                if from + i > MAX_HEAD {
                    return Err(ReadError::Bad(431, "request header fields too large"));
                }
                break from + i;
            }
            // No terminator in these bytes: any later one starts past MAX_HEAD. (Refusing at
            // `> MAX_HEAD` instead made a head ending just under the cap pass or fail by how
            // the client's bytes happened to be split into reads.)
            if head.len() > MAX_HEAD + 3 {
                return Err(ReadError::Bad(431, "request header fields too large"));
            }
        };
        let text = std::str::from_utf8(&head[..end])
            .map_err(|_| ReadError::Bad(400, "request head is not UTF-8"))?;
        let mut lines = text.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let (method, target, version) = (first.next(), first.next(), first.next());
        let (Some(method), Some(target), Some(version)) = (method, target, version) else {
            return Err(ReadError::Bad(400, "malformed request line"));
        };
        if !version.starts_with("HTTP/1.") || first.next().is_some() || !is_token(method) {
            return Err(ReadError::Bad(400, "malformed request line"));
        }
        // Origin form only (`/path?query`): the API server and metrics-server send nothing else,
        // and control characters are refused as Go's server refuses them in a URL.
        if !target.starts_with('/') || target.bytes().any(|b| b < 0x21 || b == 0x7f) {
            return Err(ReadError::Bad(400, "malformed request target"));
        }
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or(ReadError::Bad(400, "malformed header line"))?;
            // As Go's server: a name is a token (no space before the colon), a value has no
            // control characters but tabs (a bare CR or LF inside a line is not a line end).
            let value = value.trim_matches([' ', '\t']);
            if !is_token(name) || value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(ReadError::Bad(400, "malformed header line"));
            }
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        }
        let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
        let path = percent_decode(raw_path).ok_or(ReadError::Bad(400, "malformed path"))?;
        let mut query = Vec::new();
        for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(&k.replace('+', " "));
            let v = percent_decode(&v.replace('+', " "));
            match (k, v) {
                (Some(k), Some(v)) => query.push((k, v)),
                _ => return Err(ReadError::Bad(400, "malformed query")),
            }
        }
        Ok(Request {
            method: method.to_string(),
            path,
            query,
            headers,
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The last value of a query parameter (as Go's url.Values.Get takes the first; a repeated
    /// parameter is odd either way).
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An RFC 9110 token (a method, a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A whole response with its Content-Length. `head_only` for HEAD requests.
pub fn respond(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-cache, private\r\nConnection: close\r\n\r\n",
        status,
        reason(status),
        content_type,
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    w.write_all(&out)?;
    w.flush()
}

/// A v1 `Status` failure, as the API server (and our 401/403) words them.
pub fn status_json(code: u16, reason: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }))
    .unwrap_or_default()
}

/// A streamed 200 body: every write is one chunk, flushed at once (a followed log reaches the
/// reader line by line). `finish` writes the last chunk.
pub struct Chunked<W: Write> {
    inner: W,
}

impl<W: Write> Chunked<W> {
    pub fn start(mut inner: W, content_type: &str) -> io::Result<Chunked<W>> {
        write!(
            inner,
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\nCache-Control: no-cache, private\r\nConnection: close\r\n\r\n",
            content_type
        )?;
        inner.flush()?;
        Ok(Chunked { inner })
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.inner.write_all(b"0\r\n\r\n")?;
        self.inner.flush()
    }
}

impl<W: Write> Write for Chunked<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0); // an empty chunk would end the body
        }
        write!(self.inner, "{:x}\r\n", data.len())?;
        self.inner.write_all(data)?;
        self.inner.write_all(b"\r\n")?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn far() -> Instant {
        Instant::now() + std::time::Duration::from_secs(60)
    }

    #[test]
    fn parses_a_request_head() {
        let raw = b"GET /containerLogs/default/web%2D1/c?tailLines=5&follow=true&x HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer abc\r\n\r\n";
        let r = Request::read(&mut &raw[..], far()).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/containerLogs/default/web-1/c");
        assert_eq!(r.query("tailLines"), Some("5"));
        assert_eq!(r.query("x"), Some(""));
        assert_eq!(r.header("authorization"), Some("Bearer abc"));
        for bad in [
            &b"GET\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nnocolon\r\n\r\n",
            b"GET /%zz HTTP/1.1\r\n\r\n",
            b"GET / SPDY/3\r\n\r\n",
            // Found by fuzzing: an empty method (a leading space) and a target that is no path.
            b" cTG/E HTTP/1.1\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /a\rb HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX : y\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty name\r\n\r\n",
        ] {
            assert!(
                matches!(
                    Request::read(&mut &bad[..], far()),
                    Err(ReadError::Bad(400, _))
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            Request::read(&mut &b"GET / HTTP/1.1\r\n"[..], far()),
            Err(ReadError::Closed)
        ));
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(
            Request::read(&mut huge.as_bytes(), far()),
            Err(ReadError::Bad(431, _))
        ));
    }

    /// Hands out its bytes `chunk` at a time, as TCP segments and TLS records may split them.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_cap_does_not_depend_on_how_the_head_is_split() {
        // The terminator starts right at the cap: accepted whatever the reads (it was refused
        // when the bytes came one at a time), and one byte more is refused whatever the reads.
        for (pad, ok) in [(0, true), (1, false)] {
            let start = "GET / HTTP/1.1\r\nX: ";
            let head = format!(
                "{}{}\r\n\r\n",
                start,
                "a".repeat(MAX_HEAD - start.len() + pad)
            );
            assert_eq!(head.find("\r\n\r\n"), Some(MAX_HEAD + pad));
            for chunk in [1, 3, 2048] {
                let r = Request::read(&mut Trickle(head.as_bytes(), chunk), far());
                assert_eq!(r.is_ok(), ok, "chunk {}: {:?}", chunk, r.err());
            }
        }
    }

    #[test]
    fn a_slow_sender_is_dropped_at_the_deadline() {
        let past = Instant::now();
        assert!(matches!(
            Request::read(&mut &b"GET / HTTP/1.1\r\n\r\n"[..], past),
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn chunked_bodies() {
        let mut out = Vec::new();
        let mut c = Chunked::start(&mut out, "text/plain").unwrap();
        c.write_all(b"hello\n").unwrap();
        c.write_all(b"").unwrap();
        c.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.ends_with("\r\n\r\n6\r\nhello\n\r\n0\r\n\r\n"),
            "{:?}",
            text
        );
    }
}

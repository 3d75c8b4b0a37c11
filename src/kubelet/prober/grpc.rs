//! gRPC probes: one `grpc.health.v1.Health/Check` call over cleartext HTTP/2 with prior
//! knowledge (h2c), as the kubelet makes it, with a minimal hand-written HTTP/2 client: the
//! connection preface, SETTINGS (and the ACK of the server's), one HEADERS frame and one DATA
//! frame on stream 1, then frames are read until the stream ends. SERVING is a success;
//! any other status, an RPC error or a timeout is a failure with the kubelet's message.
//!
//! Everything read from the server is bounded (frame size, header block, message, frame count)
//! and checked; a hostile or non-gRPC server is a failure, never a hang past the timeout.

use super::hpack;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHOD: &str = "/grpc.health.v1.Health/Check";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// SETTINGS_MAX_FRAME_SIZE, left at its default: a larger frame is a protocol error.
const MAX_FRAME: usize = 16_384;
/// Header blocks (with CONTINUATIONs) and the response message, at most.
const MAX_BLOCK: usize = 64 * 1024;
pub(super) const MAX_MESSAGE: usize = 64 * 1024;
/// Frames read at most, whatever they are (a server that only PINGs is cut off).
pub(super) const MAX_FRAMES: usize = 1000;

const STREAM: u32 = 1;

/// One probe attempt against `host:port`, asking about `service` ("" for the whole server).
pub(super) fn probe(host: &str, port: u16, service: &str, timeout: Duration) -> Result<(), String> {
    let addr = if host.contains(':') {
        format!("[{}]:{}", host, port)
    } else {
        format!("{}:{}", host, port)
    };
    let deadline = Instant::now() + timeout;
    let conn = super::connect(Some(host), port, timeout).map_err(|e| {
        format!(
            "timeout: failed to connect service {:?} within {}: {}",
            addr,
            go_secs(timeout),
            e
        )
    })?;
    let _ = conn.set_write_timeout(Some(timeout));
    let answer = call(&mut Deadlined { conn, deadline }, &addr, service, deadline);
    let timed_out = || {
        format!(
            "timeout: health rpc did not complete within {}",
            go_secs(timeout)
        )
    };
    let answer = match answer {
        Ok(a) => a,
        Err(Failure::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(timed_out())
        }
        Err(Failure::Deadline) => return Err(timed_out()),
        Err(Failure::Io(e)) => return Err(format!("error: health rpc probe failed: {}", e)),
        Err(Failure::Protocol(e)) => return Err(format!("error: health rpc probe failed: {}", e)),
    };
    verdict(&answer, timeout)
}

/// A connection whose reads give up at the probe's deadline, however the server trickles.
struct Deadlined {
    conn: std::net::TcpStream,
    deadline: Instant,
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(std::io::ErrorKind::TimedOut)?;
        self.conn.set_read_timeout(Some(left))?;
        self.conn.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.conn.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.conn.flush()
    }
}

/// What the server answered.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Answer {
    http_status: Option<u16>,
    grpc_status: Option<u32>,
    grpc_message: String,
    /// The response message (without its 5-byte prefix), if one came.
    pub message: Option<Vec<u8>>,
}

#[derive(Debug)]
pub(super) enum Failure {
    Io(std::io::Error),
    Deadline,
    Protocol(String),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

fn protocol<T>(msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Protocol(msg.into()))
}

/// The kubelet's reading of an answer.
pub(super) fn verdict(a: &Answer, timeout: Duration) -> Result<(), String> {
    if let Some(s) = a.http_status.filter(|s| *s != 200) {
        return Err(format!(
            "error: health rpc probe failed: rpc error: code = Unknown desc = unexpected HTTP status code received from server: {}",
            s
        ));
    }
    let code = a.grpc_status.unwrap_or(2);
    let desc = if a.grpc_status.is_none() {
        "server closed the stream without sending trailers"
    } else {
        a.grpc_message.as_str()
    };
    let rpc_error = || {
        format!(
            "rpc error: code = {} desc = {}",
            code_name(code),
            percent_decode(desc)
        )
    };
    match code {
        0 => {}
        12 => {
            return Err(format!(
            "this server does not implement the grpc health protocol (grpc.health.v1.Health): {}",
            rpc_error()
        ))
        }
        4 => {
            return Err(format!(
                "timeout: health rpc did not complete within {}",
                go_secs(timeout)
            ))
        }
        _ => return Err(format!("error: health rpc probe failed: {}", rpc_error())),
    }
    let status = match &a.message {
        Some(m) => health_status(m).map_err(|e| format!("error: health rpc probe failed: {}", e))?,
        None => {
            return Err(
                "error: health rpc probe failed: rpc error: code = Internal desc = the server sent no response message"
                    .into(),
            )
        }
    };
    match status {
        1 => Ok(()),
        s => Err(format!(
            "service unhealthy (responded with {:?})",
            status_name(s)
        )),
    }
}

/// The bytes a probe sends first: preface, SETTINGS, the request's HEADERS and DATA.
fn request(authority: &str, service: &str) -> Vec<u8> {
    let mut out = PREFACE.to_vec();
    // SETTINGS_ENABLE_PUSH = 0.
    frame(&mut out, SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]);
    let mut block = Vec::new();
    hpack::indexed(&mut block, hpack::METHOD_POST);
    hpack::indexed(&mut block, hpack::SCHEME_HTTP);
    hpack::literal(&mut block, hpack::PATH, METHOD);
    hpack::literal(&mut block, hpack::AUTHORITY, authority);
    hpack::literal(&mut block, hpack::CONTENT_TYPE, "application/grpc");
    hpack::literal(&mut block, hpack::USER_AGENT, "kube-probe/1.37");
    hpack::literal_new(&mut block, "te", "trailers");
    frame(&mut out, HEADERS, END_HEADERS, STREAM, &block);
    // HealthCheckRequest { string service = 1; }, after gRPC's prefix: not compressed, length.
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a);
        varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut data = vec![0];
    data.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    data.extend_from_slice(&msg);
    frame(&mut out, DATA, END_STREAM, STREAM, &data);
    out
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Sends the request and reads until stream 1 ends.
pub(super) fn call<S: Read + Write>(
    conn: &mut S,
    authority: &str,
    service: &str,
    deadline: Instant,
) -> Result<Answer, Failure> {
    conn.write_all(&request(authority, service))?;
    conn.flush()?;
    let mut decoder = hpack::Decoder::default();
    let mut answer = Answer::default();
    let mut block: Option<(Vec<u8>, bool)> = None; // a header block waiting for CONTINUATIONs
    let mut data = Vec::new();
    for _ in 0..MAX_FRAMES {
        if Instant::now() >= deadline {
            return Err(Failure::Deadline);
        }
        let (kind, flags, stream, payload) = read_frame(conn)?;
        if block.is_some() && (kind != CONTINUATION || stream != STREAM) {
            return protocol("a header block was interrupted by another frame");
        }
        let ended = match kind {
            SETTINGS if flags & ACK == 0 => {
                if stream != 0 || payload.len() % 6 != 0 {
                    return protocol("malformed SETTINGS frame");
                }
                let mut ack = Vec::new();
                frame(&mut ack, SETTINGS, ACK, 0, &[]);
                conn.write_all(&ack)?;
                false
            }
            PING if flags & ACK == 0 => {
                if payload.len() != 8 {
                    return protocol("malformed PING frame");
                }
                let mut pong = Vec::new();
                frame(&mut pong, PING, ACK, 0, &payload);
                conn.write_all(&pong)?;
                false
            }
            GOAWAY => {
                let code = payload.get(4..8).map_or(0, be32);
                return protocol(format!(
                    "rpc error: code = Unavailable desc = the server sent GOAWAY (error code {})",
                    code
                ));
            }
            PUSH_PROMISE => return protocol("PUSH_PROMISE received though push is disabled"),
            RST_STREAM if stream == STREAM => {
                let code = payload.get(0..4).map_or(0, be32);
                return protocol(format!(
                    "rpc error: code = Internal desc = stream reset by the server (error code {})",
                    code
                ));
            }
            HEADERS if stream == STREAM => {
                let mut p = unpad(&payload, flags)?;
                if flags & PRIORITY != 0 {
                    p = p
                        .get(5..)
                        .ok_or(Failure::Protocol("short HEADERS frame".into()))?;
                }
                let end_stream = flags & END_STREAM != 0;
                if flags & END_HEADERS == 0 {
                    block = Some((p.to_vec(), end_stream));
                    false
                } else {
                    on_headers(&mut decoder, &mut answer, p)?;
                    end_stream
                }
            }
            CONTINUATION => {
                let Some((mut b, end_stream)) = block.take() else {
                    return protocol("CONTINUATION without a header block");
                };
                b.extend_from_slice(&payload);
                if b.len() > MAX_BLOCK {
                    return protocol("header block too large");
                }
                if flags & END_HEADERS == 0 {
                    block = Some((b, end_stream));
                    false
                } else {
                    on_headers(&mut decoder, &mut answer, &b)?;
                    end_stream
                }
            }
            DATA if stream == STREAM => {
                data.extend_from_slice(unpad(&payload, flags)?);
                if data.len() > MAX_MESSAGE + 5 {
                    return protocol("response message too large");
                }
                flags & END_STREAM != 0
            }
            // WINDOW_UPDATE, PRIORITY, ACKs, unknown types, other streams: nothing to do.
            _ => false,
        };
        if ended {
            answer.message = message(&data)?;
            return Ok(answer);
        }
    }
    protocol(format!("no answer within {} frames", MAX_FRAMES))
}

fn on_headers(decoder: &mut hpack::Decoder, a: &mut Answer, block: &[u8]) -> Result<(), Failure> {
    let fields = decoder.decode(block).map_err(Failure::Protocol)?;
    for (name, value) in fields {
        match name.as_str() {
            ":status" => a.http_status = value.parse().ok(),
            "grpc-status" => {
                a.grpc_status = Some(
                    value
                        .parse()
                        .map_err(|_| Failure::Protocol(format!("bad grpc-status {:?}", value)))?,
                )
            }
            "grpc-message" => a.grpc_message = value,
            _ => {}
        }
    }
    Ok(())
}

/// One frame: (type, flags, stream, payload), at most MAX_FRAME bytes of payload.
fn read_frame<R: Read>(r: &mut R) -> Result<(u8, u8, u32, Vec<u8>), Failure> {
    let mut head = [0u8; 9];
    r.read_exact(&mut head)?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    if len > MAX_FRAME {
        // Also what an HTTP/1 server's "HTTP/1.1 400" looks like as a frame header.
        return protocol(format!(
            "a frame of {} bytes (above {}): not an HTTP/2 server?",
            len, MAX_FRAME
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok((head[3], head[4], be32(&head[5..9]) & 0x7fff_ffff, payload))
}

fn be32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u32::from_be_bytes(a)
}

/// A DATA or HEADERS payload without its padding.
fn unpad(p: &[u8], flags: u8) -> Result<&[u8], Failure> {
    if flags & PADDED == 0 {
        return Ok(p);
    }
    let pad = *p
        .first()
        .ok_or(Failure::Protocol("empty padded frame".into()))? as usize;
    p.get(1..p.len().saturating_sub(pad))
        .filter(|_| pad < p.len())
        .ok_or(Failure::Protocol("padding longer than the frame".into()))
}

/// The first gRPC message of a response body (5-byte prefix: compressed flag, length).
fn message(data: &[u8]) -> Result<Option<Vec<u8>>, Failure> {
    if data.is_empty() {
        return Ok(None);
    }
    if data.len() < 5 {
        return protocol("truncated gRPC message");
    }
    if data[0] != 0 {
        return protocol("compressed gRPC message, though no compression was offered");
    }
    let len = be32(&data[1..5]) as usize;
    // checked: on a 32-bit device `5 + len` can wrap.
    5usize
        .checked_add(len)
        .and_then(|end| data.get(5..end))
        .map(|m| Some(m.to_vec()))
        .ok_or(Failure::Protocol("truncated gRPC message".into()))
}

/// `status` (field 1) of a HealthCheckResponse; 0 (UNKNOWN) when absent, as protobuf defaults.
pub(super) fn health_status(msg: &[u8]) -> Result<u64, String> {
    let mut i = 0;
    let mut status = 0;
    let read_varint = |i: &mut usize| -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *msg.get(*i).ok_or("truncated protobuf varint")?;
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("protobuf varint too long".into())
    };
    while i < msg.len() {
        let key = read_varint(&mut i)?;
        let skip = match key & 7 {
            0 => {
                let v = read_varint(&mut i)?;
                if key >> 3 == 1 {
                    status = v;
                }
                0
            }
            1 => 8,
            2 => read_varint(&mut i)? as usize,
            5 => 4,
            w => return Err(format!("protobuf wire type {} not expected", w)),
        };
        i = i
            .checked_add(skip)
            .filter(|e| *e <= msg.len())
            .ok_or("truncated protobuf field")?;
    }
    Ok(status)
}

fn status_name(s: u64) -> String {
    match s {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => n.to_string(),
    }
}

fn code_name(c: u32) -> String {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    NAMES
        .get(c as usize)
        .map_or_else(|| format!("Code({})", c), |n| n.to_string())
}

/// grpc-message is percent-encoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Go duration for whole seconds ("1s"), as the kubelet prints the timeout.
fn go_secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A scripted server: what it sends is `input`; what the client writes is kept.
    struct Scripted {
        input: Cursor<Vec<u8>>,
        written: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn run(server: Vec<u8>) -> (Result<Answer, Failure>, Vec<u8>) {
        let mut s = Scripted {
            input: Cursor::new(server),
            written: Vec::new(),
        };
        let r = call(
            &mut s,
            "127.0.0.1:9",
            "svc",
            Instant::now() + Duration::from_secs(5),
        );
        (r, s.written)
    }

    fn grpc_body(status: u8) -> Vec<u8> {
        vec![0, 0, 0, 0, 2, 0x08, status]
    }

    #[test]
    fn the_request_bytes() {
        let r = request("127.0.0.1:9", "svc");
        assert!(r.starts_with(PREFACE));
        let rest = &r[PREFACE.len()..];
        // SETTINGS with ENABLE_PUSH=0.
        assert_eq!(&rest[..15], &[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
        let (kind, flags, stream, block) = read_frame(&mut &rest[15..]).unwrap();
        assert_eq!((kind, flags, stream), (HEADERS, END_HEADERS, 1));
        let fields = hpack::Decoder::default().decode(&block).unwrap();
        let want: Vec<(String, String)> = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Check"),
            (":authority", "127.0.0.1:9"),
            ("content-type", "application/grpc"),
            ("user-agent", "kube-probe/1.37"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(fields, want);
        let data_at = 15 + 9 + block.len();
        let (kind, flags, stream, data) = read_frame(&mut &rest[data_at..]).unwrap();
        assert_eq!((kind, flags, stream), (DATA, END_STREAM, 1));
        assert_eq!(data, [0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']);
    }

    /// A server's answer: SETTINGS, a PING, headers, the message, trailers.
    fn answer(status: u8, grpc_status: &str) -> Vec<u8> {
        let mut s = Vec::new();
        frame(&mut s, SETTINGS, 0, 0, &[0, 4, 0, 0, 0x40, 0]);
        frame(&mut s, PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut h = Vec::new();
        hpack::indexed(&mut h, 8); // :status 200
                                   // content-type with incremental indexing, then used again from the dynamic table.
        h.push(0x40 | 31);
        hpack::encode_str(&mut h, "application/grpc");
        frame(&mut s, HEADERS, END_HEADERS, 1, &h);
        frame(&mut s, DATA, 0, 1, &grpc_body(status));
        let mut t = Vec::new();
        hpack::literal_new(&mut t, "grpc-status", grpc_status);
        hpack::literal_new(&mut t, "grpc-message", "all%20fine");
        hpack::indexed(&mut t, 62);
        frame(&mut s, HEADERS, END_HEADERS | END_STREAM, 1, &t);
        s
    }

    #[test]
    fn serving_and_not_serving() {
        let (r, written) = run(answer(1, "0"));
        let a = r.unwrap();
        assert_eq!(a.http_status, Some(200));
        assert_eq!(a.grpc_status, Some(0));
        assert!(verdict(&a, Duration::from_secs(1)).is_ok());
        // The server's SETTINGS were ACKed and its PING answered.
        let tail = &written[request("127.0.0.1:9", "svc").len()..];
        assert_eq!(&tail[..9], &[0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]);
        assert_eq!(&tail[9..18], &[0, 0, 8, PING, ACK, 0, 0, 0, 0]);

        let a = run(answer(2, "0")).0.unwrap();
        assert_eq!(
            verdict(&a, Duration::from_secs(1)).unwrap_err(),
            "service unhealthy (responded with \"NOT_SERVING\")"
        );
    }

    #[test]
    fn rpc_errors_read_as_the_kubelet_shows_them() {
        // Trailers-only: NOT_FOUND for an unknown service.
        let mut s = Vec::new();
        let mut t = Vec::new();
        hpack::indexed(&mut t, 8);
        hpack::literal_new(&mut t, "grpc-status", "5");
        hpack::literal_new(&mut t, "grpc-message", "unknown%20service");
        frame(&mut s, HEADERS, END_HEADERS | END_STREAM, 1, &t);
        let a = run(s).0.unwrap();
        assert_eq!(
            verdict(&a, Duration::from_secs(1)).unwrap_err(),
            "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service"
        );
        let a = Answer {
            http_status: Some(200),
            grpc_status: Some(12),
            ..Default::default()
        };
        assert!(verdict(&a, Duration::from_secs(1))
            .unwrap_err()
            .contains("does not implement the grpc health protocol"));
    }

    #[test]
    fn continuation_and_padding() {
        let mut s = Vec::new();
        let mut h = Vec::new();
        hpack::indexed(&mut h, 8);
        hpack::literal_new(&mut h, "grpc-status", "0");
        let (a, b) = h.split_at(3);
        // HEADERS, padded by 2, with the priority fields, then a CONTINUATION.
        let mut p = vec![2, 0, 0, 0, 0, 16];
        p.extend_from_slice(a);
        p.extend_from_slice(&[0, 0]);
        frame(&mut s, DATA, PADDED, 1, &[1, 0, 0, 0, 0, 2, 0x08, 1, 0xff]);
        frame(&mut s, HEADERS, PADDED | PRIORITY | END_STREAM, 1, &p);
        frame(&mut s, CONTINUATION, END_HEADERS, 1, b);
        let a = run(s).0.unwrap();
        assert_eq!(a.grpc_status, Some(0));
        assert_eq!(a.message, Some(vec![0x08, 1]));
    }

    #[test]
    fn hostile_servers_fail_without_panics() {
        let cases: Vec<Vec<u8>> = vec![
            b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            vec![0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1],
            vec![0, 0, 1],
            {
                let mut s = Vec::new();
                frame(&mut s, DATA, PADDED, 1, &[9, 0]);
                s
            },
            {
                let mut s = Vec::new();
                frame(&mut s, HEADERS, END_HEADERS | END_STREAM, 1, &[0xff, 0xff]);
                s
            },
            {
                let mut s = Vec::new();
                frame(&mut s, DATA, END_STREAM, 1, &[0, 0xff, 0xff, 0xff, 0xff, 1]);
                s
            },
            {
                let mut s = Vec::new();
                frame(&mut s, GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 2]);
                s
            },
            {
                let mut s = Vec::new();
                frame(&mut s, CONTINUATION, END_HEADERS, 1, &[0x88]);
                s
            },
            {
                let mut s = Vec::new();
                for _ in 0..MAX_FRAMES + 1 {
                    frame(&mut s, 0x8, 0, 0, &[0, 0, 0, 1]);
                }
                s
            },
        ];
        for c in cases {
            assert!(run(c.clone()).0.is_err(), "{:x?}", &c[..c.len().min(20)]);
        }
        assert!(health_status(&[0x08]).is_err());
        assert!(health_status(&[0x0a, 0x05, 1]).is_err());
        assert!(health_status(&[0x0b]).is_err());
        assert_eq!(health_status(&[0x12, 0x01, 0x00, 0x08, 0x01]).unwrap(), 1);
        assert_eq!(health_status(&[]).unwrap(), 0);
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn a_silent_server_times_out_and_a_closed_port_fails() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t0 = Instant::now();
        let e = probe("127.0.0.1", port, "", Duration::from_secs(1)).unwrap_err();
        assert!(
            e.starts_with("timeout: health rpc did not complete within 1s"),
            "{}",
            e
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
        drop(l);
        let e = probe("127.0.0.1", port, "", Duration::from_secs(1)).unwrap_err();
        assert!(e.starts_with("timeout: failed to connect service"), "{}", e);
    }
}

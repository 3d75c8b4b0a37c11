//! `GET /healthz` -> `200 ok`, as the kubelet answers on 127.0.0.1:10248. One thread, one
//! connection at a time, a short timeout per connection: a health check must never be the thing
//! that hangs or eats memory.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// Starts the server; a port already taken is a warning, not a failure of the agent.
pub fn start(address: &str, port: u16) {
    if port == 0 {
        return;
    }
    let listener = match TcpListener::bind((address, port)) {
        Ok(l) => l,
        Err(e) => {
            log::warn!(
                "healthz: cannot listen on {}:{}: {}; health checks are off",
                address,
                port,
                e
            );
            return;
        }
    };
    log::info!("healthz: http://{}:{}/healthz", address, port);
    let spawned = std::thread::Builder::new()
        .name("healthz".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                answer(conn);
            }
        });
    if let Err(e) = spawned {
        log::warn!("healthz: starting its thread: {}", e);
    }
}

fn answer(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 1024];
    let mut n = 0;
    // The request line is all that matters; read until it is complete (or the buffer is full).
    while n < buf.len() {
        match conn.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n += k;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || buf[..n].contains(&b'\n') {
                    break;
                }
            }
        }
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/healthz") => ("200 OK", "ok"),
        ("GET" | "HEAD", _) => ("404 Not Found", "404 page not found\n"),
        _ => ("405 Method Not Allowed", "method not allowed\n"),
    };
    let body = if method == "HEAD" { "" } else { body };
    let _ = write!(
        conn,
        "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        status,
        body.len(),
        body
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(port: u16, request: &str) -> String {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn answers_healthz_and_nothing_else() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        start("127.0.0.1", port);
        let ok = get(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{}", ok);
        assert!(ok.ends_with("\r\n\r\nok"), "{}", ok);
        assert!(get(port, "GET /pods HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(port, "POST /healthz HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // A client that sends nothing does not block the next one for long.
        let _idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(get(port, "GET /healthz HTTP/1.0\r\n\r\n").contains("200 OK"));
    }
}

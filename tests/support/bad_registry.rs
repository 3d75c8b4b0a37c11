//! A misbehaving registry for the hostile-registry tests: a tiny HTTP/1.1 server on 127.0.0.1
//! whose every answer is chosen by the test (a handler per request), including answers no honest
//! server gives: a Content-Length that lies, a body that never ends, redirects in a circle.
//! Plain HTTP: tinylet speaks plain HTTP to registries on loopback.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One request as the handler sees it.
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: BTreeMap<String, String>,
}

/// What goes out after the status line and headers.
pub enum Body {
    Bytes(Vec<u8>),
    /// Announces `declared` bytes in Content-Length, sends `bytes`, then hangs up.
    Lie {
        declared: u64,
        bytes: Vec<u8>,
    },
    /// No Content-Length; `byte` repeated until the client hangs up (capped at 4 GiB so a broken
    /// client cannot keep the test running forever).
    Endless(u8),
}

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Reply {
    pub fn ok(content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: Body::Bytes(body),
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Body::Bytes(b"{}".to_vec()),
        }
    }

    pub fn redirect(location: String) -> Reply {
        Reply {
            status: 307,
            headers: vec![("Location".into(), location)],
            body: Body::Bytes(Vec::new()),
        }
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

pub struct BadRegistry {
    /// "127.0.0.1:<port>".
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
    sent: Arc<AtomicU64>,
}

impl BadRegistry {
    /// Serves `handler` until the test process ends.
    pub fn serve(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> BadRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the bad registry");
        let addr = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (log2, sent2) = (log.clone(), sent.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (h, l, s) = (handler.clone(), log2.clone(), sent2.clone());
                std::thread::spawn(move || connection(stream, &*h, &l, &s));
            }
        });
        BadRegistry { addr, log, sent }
    }

    /// "METHOD /path" of every request so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Body bytes written to clients so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

fn connection(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<String>>, sent: &AtomicU64) {
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    // tinylet tries HTTPS first on loopback: a TLS ClientHello is not HTTP, hang up.
    match reader.fill_buf() {
        Ok(b) if !b.is_empty() && b[0].is_ascii_uppercase() => {}
        _ => return,
    }
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    log.lock().unwrap().push(format!("{} {}", method, path));
    let reply = handler(&Request {
        method,
        path,
        headers,
    });
    // One request per connection keeps the server simple; clients reconnect.
    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
    match &reply.body {
        Body::Bytes(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Body::Lie { declared, .. } => head.push_str(&format!("Content-Length: {}\r\n", declared)),
        Body::Endless(_) => {}
    }
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if out.write_all(head.as_bytes()).is_err() {
        return;
    }
    match reply.body {
        Body::Bytes(b) | Body::Lie { bytes: b, .. } => {
            if out.write_all(&b).is_ok() {
                sent.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        }
        Body::Endless(byte) => {
            let chunk = vec![byte; 64 << 10];
            let mut total = 0u64;
            while total < 4 << 30 && out.write_all(&chunk).is_ok() {
                total += chunk.len() as u64;
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = out.flush();
    let _ = out.shutdown(Shutdown::Both);
}

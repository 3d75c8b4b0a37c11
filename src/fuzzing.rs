//! Entry points of the fuzz targets (fuzz/fuzz_targets/*.rs), one per parser that reads bytes
//! from outside: each takes arbitrary bytes, must never panic, and checks what must hold whatever
//! the input. Compiled only for the fuzz crate (`--cfg fuzzing`, which includes this file by
//! path) and for the unit tests, which replay the committed corpus (fuzz/corpus/<target>/) on the
//! stable toolchain so CI needs no nightly. Not part of the binary. See docs/FUZZING.md.

use std::path::Path;

#[cfg(test)]
#[path = "fuzz_mutate.rs"]
mod mutate;

/// A fuzz target's body: any bytes in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/` call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("pod_manifest", pod_manifest),
    ("kubeconfig", kubeconfig),
    ("watch_stream", watch_stream),
    ("image_manifest", image_manifest),
    ("layer_unpack", layer_unpack),
    ("cni_result", cni_result),
    ("node_api_request", node_api_request),
    ("probe_response", probe_response),
];

/// A static pod manifest as `tinylet run` reads one: YAML (several documents) and JSON.
pub fn pod_manifest(data: &[u8]) {
    // read_manifest_file refuses non-UTF-8 files before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for file in [
        "/etc/tinylet/manifests/pod.yaml",
        "/etc/tinylet/manifests/pod.json",
    ] {
        for result in crate::kubelet::manifest::parse_manifest(Path::new(file), text, "node-1") {
            match result {
                Ok(pod) => {
                    assert!(!pod.name.is_empty() && !pod.uid.is_empty());
                    assert!(!pod.spec.containers.is_empty(), "a pod without containers");
                    // What the agent stores and echoes must serialize.
                    serde_json::to_vec(&*pod.object).expect("a parsed pod serializes");
                }
                Err(e) => assert!(!e.message.is_empty(), "an error without a message"),
            }
        }
    }
}

/// A kubeconfig. Relative file references resolve into an empty directory, so only the text is
/// exercised (absolute ones name files of the machine running the fuzzer, which only read).
pub fn kubeconfig(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = std::env::temp_dir().join("tinylet-fuzz-kubeconfig-empty");
    match crate::kube::kubeconfig::parse(text, &base) {
        Ok(conn) => {
            assert!(conn.server.starts_with("https://") || conn.server.starts_with("http://"));
            assert_eq!(
                conn.client_cert_pem.is_some(),
                conn.client_key_pem.is_some()
            );
            assert!(!(conn.insecure_skip_tls_verify && conn.ca_pem.is_some()));
        }
        Err(e) => assert!(!e.is_empty()),
    }
}

/// The body of a watch response: events until the end, an error, or a bounded number.
pub fn watch_stream(data: &[u8]) {
    let mut stream =
        crate::kube::client::WatchStream::from_reader(std::io::Cursor::new(data.to_vec()));
    // Each event consumes at least one byte, so this bound is never what stops a real input.
    for _ in 0..=data.len() {
        match stream.next_event() {
            Ok(Some(ev)) => assert_ne!(ev.kind, "ERROR", "ERROR events are errors"),
            Ok(None) | Err(_) => return,
        }
    }
    panic!("the watch decoder returned more events than the input has bytes");
}

/// A registry manifest or index (and the config blob and platform choice that follow).
pub fn image_manifest(data: &[u8]) {
    crate::image::fuzz::manifest(data);
}

/// One layer tarball unpacked into a fresh root: nothing may land outside it.
pub fn layer_unpack(data: &[u8]) {
    crate::image::fuzz::layer(data);
}

/// What a CNI plugin prints: a success result of any spec version (reduced to the pod's
/// addresses) or an error result. Every address given back must be one.
pub fn cni_result(data: &[u8]) {
    let _ = crate::network::result::parse_error(data);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        for ip in crate::network::result::pod_ips(&v) {
            assert!(
                ip.parse::<std::net::IpAddr>().is_ok(),
                "a pod IP that is not an address: {:?}",
                ip
            );
        }
    }
}

/// One request to the node API (port 10250) as a client sends it after the TLS handshake: the
/// head parser (the same outcome however the bytes are split into reads; a head that never
/// ends is refused at the cap, having read at most the cap and one buffer), then the
/// `Authorization` header, the authorization attributes and the router, with
/// `/containerLogs` options against a pod with a real log (limitBytes and tailLines hold).
pub fn node_api_request(data: &[u8]) {
    crate::server::fuzz::request(data);
}

/// What a container sends back to a probe: an HPACK block (the decoded list within its cap),
/// the gRPC probe's HTTP/2 server (bounded answer, bounded replies), the httpGet probe's HTTP
/// answer (the same head however it is split, a cap on an endless one, a sane redirect).
pub fn probe_response(data: &[u8]) {
    crate::kubelet::prober::fuzz::response(data);
}

/// A peer for the targets that read from a socket: the input handed out `chunk` bytes at a time
/// (as TCP segments and TLS records may split it), then EOF, or over and over when `endless`.
/// Counts what was read (`given`) and what the code under test wrote back (`written`).
pub struct Feed<'a> {
    data: &'a [u8],
    at: usize,
    chunk: usize,
    endless: bool,
    pub given: usize,
    pub written: usize,
}

impl<'a> Feed<'a> {
    pub fn new(data: &'a [u8], chunk: usize, endless: bool) -> Feed<'a> {
        Feed {
            data,
            at: 0,
            chunk,
            endless,
            given: 0,
            written: 0,
        }
    }
}

impl std::io::Read for Feed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.data.len() {
            if !self.endless || self.data.is_empty() {
                return Ok(0);
            }
            self.at = 0;
        }
        let n = buf.len().min(self.chunk).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        self.given += n;
        Ok(n)
    }
}

impl std::io::Write for Feed<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays every committed corpus file (and every crash that was fixed, kept as a
    /// regression input) through its target: the stable-toolchain half of the fuzzing.
    #[test]
    fn fuzz_corpus_replays_without_panics() {
        let mut replayed = 0;
        for (name, target) in TARGETS {
            for data in super::mutate::corpus(name) {
                target(&data);
                replayed += 1;
            }
        }
        assert!(replayed >= TARGETS.len(), "the fuzz corpus is missing");
    }

    /// The fuzz crate includes the sources by path and must declare the same top-level modules.
    #[test]
    fn fuzz_crate_mirrors_the_binarys_modules() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let main = std::fs::read_to_string(root.join("src/main.rs")).unwrap();
        let fuzz = std::fs::read_to_string(root.join("fuzz/src/lib.rs")).unwrap();
        for line in main.lines() {
            if let Some(m) = line.strip_prefix("mod ").and_then(|l| l.strip_suffix(';')) {
                assert!(
                    fuzz.contains(&format!("pub mod {};", m)),
                    "fuzz/src/lib.rs lacks `mod {}` (src/main.rs has it)",
                    m
                );
            }
        }
    }

    /// The fuzz crate repeats the binary's dependencies (the sources it compiles use them): a
    /// feature or crate added to one and not the other broke the fuzz build unseen once.
    #[test]
    fn fuzz_crate_has_the_binarys_dependencies() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let main = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        let fuzz = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
        let deps = main
            .split("\n[dependencies]\n")
            .nth(1)
            .and_then(|rest| rest.split("\n[").next())
            .expect("Cargo.toml has a [dependencies] section");
        for line in deps.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            assert!(
                fuzz.lines().any(|l| l.trim() == line),
                "fuzz/Cargo.toml lacks the dependency line `{}` (Cargo.toml has it)",
                line
            );
        }
    }

    #[test]
    fn targets_take_empty_and_garbage_input() {
        for (_, target) in TARGETS {
            target(b"");
            target(b"\xff\xfe{[---\n\0");
        }
    }
}

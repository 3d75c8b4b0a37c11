//! End-to-end pulls against a tiny in-process registry on 127.0.0.1 (plain HTTP, which loopback
//! registries get after the HTTPS attempt fails): index -> manifest -> config + gzip layer,
//! behind a Bearer token service, with a redirected and interrupted blob download.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use super::*;
use crate::image::digest::sha256_of;
use crate::image::oci;
use crate::image::testutil::{gzip, tar_of, TempDir, E};

struct Request {
    path: String,
    headers: BTreeMap<String, String>,
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send the full Content-Length but only this many body bytes, then hang up.
    cut_at: Option<usize>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
    Reply {
        status,
        headers: vec![("Content-Type".into(), content_type.into())],
        body,
        cut_at: None,
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// Serves `handler` on 127.0.0.1; returns "127.0.0.1:<port>" and the log of requested paths.
fn serve(handler: Arc<Handler>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (h, l) = (handler.clone(), log2.clone());
            std::thread::spawn(move || connection(stream, &*h, &l));
        }
    });
    (addr, log)
}

fn connection(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<String>>) {
    let mut out = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        // A TLS ClientHello (0x16...) is not HTTP: hang up, as the HTTPS probe expects.
        match reader.fill_buf() {
            Ok(b) if !b.is_empty() && b[0].is_ascii_uppercase() => {}
            _ => return,
        }
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or_default().to_string();
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
        log.lock().unwrap().push(path.clone());
        let r = handler(&Request { path, headers });
        let mut head = format!(
            "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
            r.status,
            r.body.len()
        );
        for (k, v) in &r.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let body = &r.body[..r.cut_at.unwrap_or(r.body.len())];
        if out
            .write_all(head.as_bytes())
            .and_then(|_| out.write_all(body))
            .is_err()
            || r.cut_at.is_some()
        {
            let _ = out.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// A one-layer image for linux/arm64/v8 inside an index that also lists amd64 and an attestation.
struct Fixture {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
    index: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
        let plain = tar_of(&[
            E::Dir("etc"),
            E::File("etc/hello.txt", b"hello from the registry"),
        ]);
        let layer = gzip(&plain);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "arm64", "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_of(&plain)]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::MEDIA_OCI_MANIFEST,
            "config": {"mediaType": oci::MEDIA_OCI_CONFIG, "digest": sha256_of(&config), "size": config.len()},
            "layers": [{"mediaType": oci::MEDIA_OCI_LAYER_GZIP, "digest": sha256_of(&layer), "size": layer.len()}],
        }))
        .unwrap();
        let bogus = format!("sha256:{}", "b".repeat(64));
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::MEDIA_OCI_INDEX,
            "manifests": [
                {"mediaType": oci::MEDIA_OCI_MANIFEST, "digest": bogus, "size": 10,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": oci::MEDIA_OCI_MANIFEST, "digest": sha256_of(&manifest), "size": manifest.len(),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": oci::MEDIA_OCI_MANIFEST, "digest": bogus, "size": 10,
                 "platform": {"os": "unknown", "architecture": "unknown"}},
            ],
        }))
        .unwrap();
        Fixture {
            layer,
            config,
            manifest,
            index,
        }
    }
}

const TOKEN: &str = "tok-123";

/// The registry: Bearer auth for alice:s3cret, tags v1 (the index) and evil (ambiguous), blobs
/// redirected to /cdn/ whose first layer response breaks halfway.
fn registry(f: Fixture) -> (String, Arc<Mutex<Vec<String>>>) {
    let addr = Arc::new(Mutex::new(String::new()));
    let addr2 = addr.clone();
    let broke_once = Mutex::new(false);
    let handler = move |r: &Request| -> Reply {
        let me = addr2.lock().unwrap().clone();
        let auth = r.headers.get("authorization").cloned().unwrap_or_default();
        if let Some(query) = r.path.strip_prefix("/token?") {
            assert!(
                query.contains("scope=repository%3Ateam%2Fapp%3Apull"),
                "{query}"
            );
            assert!(query.contains("service=test-registry"), "{query}");
            // alice:s3cret
            if auth != "Basic YWxpY2U6czNjcmV0" {
                return reply(401, "application/json", b"{}".to_vec());
            }
            let body = format!("{{\"token\": \"{TOKEN}\", \"expires_in\": 300}}");
            return reply(200, "application/json", body.into_bytes());
        }
        if let Some(digest) = r.path.strip_prefix("/cdn/") {
            // Redirects must not carry the registry's token to another place.
            assert!(auth.is_empty(), "Authorization leaked to the blob redirect");
            let body = if digest == sha256_of(&f.layer) {
                f.layer.clone()
            } else if digest == sha256_of(&f.config) {
                f.config.clone()
            } else {
                return reply(404, "text/plain", vec![]);
            };
            if let Some(range) = r.headers.get("range") {
                let start: usize = range
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .unwrap();
                let mut rep = reply(206, "application/octet-stream", body[start..].to_vec());
                rep.headers.push((
                    "Content-Range".into(),
                    format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
                ));
                return rep;
            }
            let mut rep = reply(200, "application/octet-stream", body.clone());
            let mut broke = broke_once.lock().unwrap();
            if digest == sha256_of(&f.layer) && !*broke {
                *broke = true;
                rep.cut_at = Some(body.len() / 2);
            }
            return rep;
        }
        if auth != format!("Bearer {TOKEN}") {
            let mut rep = reply(
                401,
                "application/json",
                br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#.to_vec(),
            );
            rep.headers.push((
                "WWW-Authenticate".into(),
                format!(
                    r#"Bearer realm="http://{me}/token",service="test-registry",scope="repository:team/app:pull""#
                ),
            ));
            return rep;
        }
        let manifest_digest = sha256_of(&f.manifest);
        let index_digest = sha256_of(&f.index);
        match r.path.strip_prefix("/v2/team/app/") {
            Some("manifests/v1") => reply(200, oci::MEDIA_OCI_INDEX, f.index.clone()),
            Some(p) if p == format!("manifests/{index_digest}") => {
                reply(200, oci::MEDIA_OCI_INDEX, f.index.clone())
            }
            Some(p) if p == format!("manifests/{manifest_digest}") => {
                reply(200, oci::MEDIA_OCI_MANIFEST, f.manifest.clone())
            }
            Some("manifests/evil") => {
                let mut doc: serde_json::Value = serde_json::from_slice(&f.manifest).unwrap();
                doc["manifests"] = serde_json::json!([]);
                reply(
                    200,
                    oci::MEDIA_OCI_MANIFEST,
                    serde_json::to_vec(&doc).unwrap(),
                )
            }
            Some(p) if p.starts_with("blobs/") => Reply {
                status: 307,
                headers: vec![("Location".into(), format!("http://{me}/cdn/{}", &p[6..]))],
                body: vec![],
                cut_at: None,
            },
            _ => reply(
                404,
                "application/json",
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
                    .to_vec(),
            ),
        }
    };
    let (a, log) = serve(Arc::new(handler));
    *addr.lock().unwrap() = a.clone();
    (a, log)
}

fn options(user: &str, pass: &str, registry: &str) -> PullOptions {
    PullOptions {
        auths: vec![RegistryAuth {
            registry: registry.to_string(),
            username: user.into(),
            password: pass.into(),
        }],
        platform: Some(Platform::parse("linux/arm64").unwrap()),
        ..Default::default()
    }
}

#[test]
fn pulls_an_index_through_bearer_auth_with_a_resumed_layer() {
    let f = Fixture::new();
    let (index_digest, manifest_digest, config_digest) = (
        sha256_of(&f.index),
        sha256_of(&f.manifest),
        sha256_of(&f.config),
    );
    let layer_len = f.layer.len() as u64;
    let (addr, log) = registry(f);
    let dir = TempDir::new("pull");
    let store = ImageStore::open(dir.path()).unwrap();
    let opts = options("alice", "s3cret", &addr);
    let reference = format!("{addr}/team/app:v1");

    let mut events = Vec::new();
    let image = store
        .pull(&reference, &opts, &mut |p| events.push(p))
        .unwrap();
    assert_eq!(image.name, reference);
    assert_eq!(image.id, config_digest);
    assert_eq!(image.repo_digest, format!("{addr}/team/app@{index_digest}"));
    assert_eq!(image.config.cmd, vec!["/bin/sh"]);
    assert_eq!(
        std::fs::read_to_string(image.rootfs.join("etc/hello.txt")).unwrap(),
        "hello from the registry"
    );
    let last = events.last().unwrap();
    assert_eq!(
        (last.layer, last.layers, last.bytes, last.total),
        (1, 1, layer_len, layer_len)
    );
    assert!(events.iter().any(|p| p.bytes > 0 && p.bytes < layer_len));

    // The download broke halfway and resumed with a Range request.
    let first_log = log.lock().unwrap().clone();
    let layer_fetches = first_log.iter().filter(|p| p.starts_with("/cdn/")).count();
    assert_eq!(
        layer_fetches, 3,
        "config + broken layer + resumed layer: {first_log:?}"
    );

    // Resolvable by name, by index digest and by manifest digest.
    for r in [
        reference.clone(),
        format!("{addr}/team/app@{index_digest}"),
        format!("{addr}/team/app@{manifest_digest}"),
    ] {
        assert_eq!(
            store.resolve(&r).unwrap().map(|i| i.id),
            Some(config_digest.clone()),
            "{r}"
        );
    }

    // Idempotent: a second pull fetches no blob and no token (cached).
    let before = log.lock().unwrap().len();
    let again = store.pull(&reference, &opts, &mut |_| {}).unwrap();
    assert_eq!(again.id, image.id);
    let second: Vec<String> = log.lock().unwrap()[before..].to_vec();
    assert!(
        second
            .iter()
            .all(|p| p.starts_with("/v2/team/app/manifests/")),
        "{second:?}"
    );

    // By digest: recorded under the digest reference, resolvable by it.
    let by_digest = format!("{addr}/team/app@{index_digest}");
    let pinned = store.pull(&by_digest, &opts, &mut |_| {}).unwrap();
    assert_eq!(pinned.id, image.id);
    assert!(store.resolve(&by_digest).unwrap().is_some());
}

#[test]
fn registry_errors_are_typed() {
    let (addr, _log) = registry(Fixture::new());
    let dir = TempDir::new("pull-errors");
    let store = ImageStore::open(dir.path()).unwrap();
    let good = options("alice", "s3cret", &addr);

    let err = store
        .pull(
            &format!("{addr}/team/app:v1"),
            &options("alice", "wrong", &addr),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("check imagePullSecrets"), "{err}");

    let err = store
        .pull(&format!("{addr}/team/app:nope"), &good, &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(err, ImageError::NotFoundInRegistry { .. }),
        "{err}"
    );

    let err = store
        .pull(&format!("{addr}/team/app:evil"), &good, &mut |_| {})
        .unwrap_err();
    assert!(matches!(err, ImageError::AmbiguousManifest { .. }), "{err}");

    let mut amd64 = good.clone();
    amd64.platform = Some(Platform::parse("linux/riscv64").unwrap());
    let err = store
        .pull(&format!("{addr}/team/app:v1"), &amd64, &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err}"
    );

    // A port nothing listens on: a connection error naming the registry.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = store
        .pull(&format!("127.0.0.1:{port}/x:1"), &good, &mut |_| {})
        .unwrap_err();
    match &err {
        ImageError::Registry {
            registry, message, ..
        } => {
            assert_eq!(registry, &format!("127.0.0.1:{port}"));
            assert!(message.contains("refused"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!(matches!(
        store.pull("Bad Name", &good, &mut |_| {}),
        Err(ImageError::InvalidReference { .. })
    ));
    // Nothing half-pulled is left behind.
    assert!(store.list().unwrap().is_empty());
    let tmp = dir.path().join("images/tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
}

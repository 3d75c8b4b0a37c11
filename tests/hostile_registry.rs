//! Hostile registries (issue 10, point 4): `tinylet image pull` against a registry that lies.
//! The crafted-tarball corpus is tests/hostile_images.rs and interrupted pulls are
//! tests/pull_interrupted.rs; this file adds what a registry itself can do wrong: content that
//! does not hash to its digest, sizes that lie (in a descriptor, in Content-Length), redirects in
//! a circle, and bodies that never end.
//!
//! Every case must end in a refusal that names what was wrong, within a bounded time, having read
//! a bounded number of bytes, with nothing stored: the image not listed, no blob of the bad
//! content in the store, images/tmp empty.
//!
//! Run: `cargo test --test hostile_registry` (no root needed; support/bad_registry.rs serves).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::bad_registry::{BadRegistry, Body, Reply, Request};
use support::oci::{go_arch, one_file_tar, sha256_digest};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Any refusal here takes well under this (no retry loop may run away).
const BOUND: Duration = Duration::from_secs(30);

/// A one-layer image for this machine, as the registry would serve it honestly.
#[derive(Clone)]
struct Image {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl Image {
    fn new() -> Image {
        Image::with_layer_size_delta(0)
    }

    /// `delta` is added to the layer's size in the manifest (a lying descriptor).
    fn with_layer_size_delta(delta: i64) -> Image {
        let layer = one_file_tar("hello.txt", &vec![b'x'; 64 << 10]);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": go_arch(), "os": "linux",
            "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(&layer)]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha256_digest(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": sha256_digest(&layer), "size": layer.len() as i64 + delta}],
        }))
        .unwrap();
        Image {
            layer,
            config,
            manifest,
        }
    }

    fn layer_digest(&self) -> String {
        sha256_digest(&self.layer)
    }
}

/// Serves `image` under app:v1, passing every answer through `twist` (request, honest reply).
fn registry(
    image: &Image,
    twist: impl Fn(&Request, Reply) -> Reply + Send + Sync + 'static,
) -> BadRegistry {
    let image = Arc::new(image.clone());
    BadRegistry::serve(move |r| {
        let honest = honest_reply(&image, &r.path);
        twist(r, honest)
    })
}

fn honest_reply(image: &Image, path: &str) -> Reply {
    if path == "/v2/" {
        return Reply::ok("application/json", b"{}".to_vec());
    }
    let Some(rest) = path.strip_prefix("/v2/app/") else {
        return Reply::status(404);
    };
    if rest == "manifests/v1" || rest == format!("manifests/{}", sha256_digest(&image.manifest)) {
        return Reply::ok(MANIFEST_TYPE, image.manifest.clone());
    }
    for blob in [&image.config, &image.layer] {
        if rest == format!("blobs/{}", sha256_digest(blob)) {
            return Reply::ok("application/octet-stream", blob.clone());
        }
    }
    Reply::status(404)
}

struct Pull {
    out: Output,
    took: Duration,
    root: PathBuf,
}

impl Pull {
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// The pull failed, said `needle`, stored nothing, and did so in time.
    fn assert_refused(&self, needle: &str) {
        let err = self.stderr();
        assert!(!self.out.status.success(), "the pull succeeded:\n{err}");
        assert!(err.contains(needle), "expected {needle:?} in:\n{err}");
        assert!(self.took < BOUND, "the refusal took {:?}", self.took);
        let ls = tinylet(&self.root, &["image", "ls"]);
        assert!(
            !String::from_utf8_lossy(&ls.stdout).contains("app"),
            "the refused image is listed"
        );
        let tmp = self.root.join("images/tmp");
        let leftovers: Vec<_> = std::fs::read_dir(&tmp)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "left in images/tmp: {leftovers:?}");
    }

    /// No blob in the store hashes differently from its name (nothing unverified was kept).
    fn assert_store_verified(&self) {
        let blobs = self.root.join("images/blobs/sha256");
        for e in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
            let data = std::fs::read(e.path()).unwrap();
            assert_eq!(
                sha256_digest(&data),
                format!("sha256:{}", e.file_name().to_string_lossy()),
                "a stored blob does not match its name"
            );
        }
    }
}

fn tinylet(root: &Path, args: &[&str]) -> Output {
    Command::new(support::bin())
        .args(args)
        .arg("--root-dir")
        .arg(root)
        .stdin(Stdio::null())
        .output()
        .expect("running tinylet")
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pull(reg: &BadRegistry, reference: &str) -> (Pull, Scratch) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let root = std::env::temp_dir().join(format!(
        "tinylet-hostile-registry-{}-{}",
        std::process::id(),
        n
    ));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let start = Instant::now();
    let out = tinylet(
        &root,
        &["image", "pull", &format!("{}/app{}", reg.addr, reference)],
    );
    (
        Pull {
            out,
            took: start.elapsed(),
            root: root.clone(),
        },
        Scratch(root),
    )
}

#[test]
fn the_honest_registry_is_pulled() {
    // The fixture itself works, so every refusal below is the twist's doing.
    let reg = registry(&Image::new(), |_, honest| honest);
    let (p, _s) = pull(&reg, ":v1");
    assert!(p.out.status.success(), "{}", p.stderr());
    p.assert_store_verified();
}

#[test]
fn a_layer_that_does_not_hash_to_its_digest_is_refused() {
    let image = Image::new();
    let digest = image.layer_digest();
    let reg = registry(&image, move |r, honest| {
        if r.path.ends_with(&digest) {
            let mut tampered = image_layer_of(&honest);
            let last = tampered.len() - 600; // inside the file's content
            tampered[last] ^= 0xff;
            return Reply::ok("application/octet-stream", tampered);
        }
        honest
    });
    let (p, _s) = pull(&reg, ":v1");
    p.assert_refused("digest mismatch");
    p.assert_store_verified();
}

fn image_layer_of(reply: &Reply) -> Vec<u8> {
    match &reply.body {
        Body::Bytes(b) => b.clone(),
        _ => unreachable!("honest replies carry bytes"),
    }
}

#[test]
fn a_manifest_that_does_not_hash_to_the_pinned_digest_is_refused() {
    let image = Image::new();
    let pinned = sha256_digest(&image.manifest);
    let reg = registry(&image, |r, honest| {
        if r.path.contains("/manifests/") {
            // Same document, one more space: another digest.
            let mut body = image_layer_of(&honest);
            body.push(b' ');
            return Reply::ok(MANIFEST_TYPE, body);
        }
        honest
    });
    let (p, _s) = pull(&reg, &format!("@{pinned}"));
    p.assert_refused("digest mismatch");
    assert!(
        !reg.log().iter().any(|l| l.contains("/blobs/")),
        "blobs were fetched for a manifest that failed its digest: {:?}",
        reg.log()
    );
}

#[test]
fn a_descriptor_size_smaller_than_the_blob_is_refused() {
    let reg = registry(&Image::with_layer_size_delta(-100), |_, honest| honest);
    let (p, _s) = pull(&reg, ":v1");
    p.assert_refused("size");
    p.assert_store_verified();
}

#[test]
fn a_descriptor_size_larger_than_the_blob_is_refused() {
    // The blob ends before the promised size: a broken download to the client, which resumes
    // (the Range requests get the whole blob again) and gives up after its retries.
    let reg = registry(&Image::with_layer_size_delta(100), |_, honest| honest);
    let (p, _s) = pull(&reg, ":v1");
    p.assert_refused("closed early (after 3 retries)");
    p.assert_store_verified();
}

#[test]
fn a_content_length_that_promises_more_than_is_sent_ends_after_the_resumes() {
    let image = Image::new();
    let digest = image.layer_digest();
    let reg = registry(&image, move |r, honest| {
        if r.path.ends_with(&digest) {
            // Every answer (also to the Range retries) promises the whole layer and sends 1 KiB.
            let bytes = image_layer_of(&honest);
            let declared = match r.headers.get("range") {
                Some(_) => 1 << 20,
                None => bytes.len() as u64,
            };
            return Reply {
                status: 200,
                headers: vec![("Content-Type".into(), "application/octet-stream".into())],
                body: Body::Lie {
                    declared,
                    bytes: bytes[..1024].to_vec(),
                },
            };
        }
        honest
    });
    let (p, _s) = pull(&reg, ":v1");
    p.assert_refused("layer");
    let layer_gets = reg.log().iter().filter(|l| l.contains("/blobs/")).count();
    assert!(layer_gets <= 8, "retried without end: {:?}", reg.log());
}

#[test]
fn an_endless_manifest_body_is_cut_off() {
    let reg = registry(&Image::new(), |r, honest| {
        if r.path.contains("/manifests/") {
            return Reply {
                status: 200,
                headers: vec![("Content-Type".into(), MANIFEST_TYPE.into())],
                body: Body::Endless(b' '),
            };
        }
        honest
    });
    let (p, _s) = pull(&reg, ":v1");
    p.assert_refused("larger than");
    // The cap is 16 MiB; socket buffers add a little.
    assert!(
        reg.bytes_sent() < 64 << 20,
        "read {} bytes of an endless manifest",
        reg.bytes_sent()
    );
}

#[test]
fn an_endless_layer_body_is_cut_off_at_its_size() {
    let image = Image::new();
    let digest = image.layer_digest();
    let reg = registry(&image, move |r, honest| {
        if r.path.ends_with(&digest) {
            return Reply {
                status: 200,
                headers: vec![("Content-Type".into(), "application/octet-stream".into())],
                body: Body::Endless(0),
            };
        }
        honest
    });
    let (p, _s) = pull(&reg, ":v1");
    p.assert_refused("layer");
    assert!(
        reg.bytes_sent() < 64 << 20,
        "read {} bytes of an endless layer",
        reg.bytes_sent()
    );
    p.assert_store_verified();
}

#[test]
fn a_redirect_loop_is_given_up() {
    let reg = BadRegistry::serve(|r| {
        if r.path == "/v2/" {
            return Reply::ok("application/json", b"{}".to_vec());
        }
        // Every request is sent to the one that is not it: /a -> /b -> /a ...
        let next = if r.path.ends_with("/a") { "b" } else { "a" };
        let host = r.headers.get("host").cloned().unwrap_or_default();
        Reply::redirect(format!("http://{host}/v2/app/manifests/{next}"))
    });
    let (p, _s) = pull(&reg, ":v1");
    p.assert_refused("redirects");
    assert!(
        reg.log().len() < 40,
        "followed {} requests",
        reg.log().len()
    );
}

#[test]
fn a_blob_redirected_to_itself_is_given_up() {
    let image = Image::new();
    let digest = image.layer_digest();
    let reg = registry(&image, move |r, honest| {
        if r.path.ends_with(&digest) {
            let host = r.headers.get("host").cloned().unwrap_or_default();
            return Reply::redirect(format!("http://{host}{}", r.path));
        }
        honest
    });
    let (p, _s) = pull(&reg, ":v1");
    p.assert_refused("redirects");
    p.assert_store_verified();
}

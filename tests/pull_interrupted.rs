//! A pull killed with SIGKILL mid-download (issue 3, point 5): nothing half-written may be
//! trusted, the image must not be listed, and the next pull must clean up and succeed.
//!
//! The registry (support/registry.rs, plain HTTP on loopback) is reached through a throttling
//! TCP relay on 127.0.0.1, so the 8 MiB layer takes ~2 s to arrive and the kill reliably lands
//! mid-blob; the relay's throttle is lifted for the second pull.
//!
//! Run: `cargo test --test pull_interrupted` (root; scripts/install-deps for the registry tools).

mod support;

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::oci::{one_file_tar, sha256_digest, write_image_layout};
use support::registry::Registry;

const LAYER_BYTES: usize = 8 << 20;
/// Registry -> tinylet: at most this many bytes per tick while throttled (~4 MiB/s).
const CHUNK: usize = 8 << 10;
const TICK: Duration = Duration::from_millis(2);

/// Deterministic incompressible bytes (xorshift64).
fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// An OCI layout in `dir` with one image: a plain-tar layer holding `/random`.
/// Returns (layer digest, sha256 of /random's content).
fn build_big_layout(dir: &Path) -> (String, String) {
    let _ = fs::remove_dir_all(dir);
    let content = random_bytes(LAYER_BYTES, 0x9e37_79b9_7f4a_7c15);
    let layer = one_file_tar("random", &content);
    write_image_layout(dir, std::slice::from_ref(&layer), &["/random"], None);
    (sha256_digest(&layer), sha256_digest(&content))
}

/// A loopback TCP relay to `upstream` that slows the upstream -> client direction while
/// `throttle` is set. Its threads live as long as the test process.
fn start_relay(upstream: u16, throttle: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            thread::spawn(move || pump(c2, s2, None));
            let throttle = throttle.clone();
            thread::spawn(move || pump(server, client, Some(throttle)));
        }
    });
    port
}

fn pump(mut from: TcpStream, mut to: TcpStream, throttle: Option<Arc<AtomicBool>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let slow = throttle.as_ref().is_some_and(|t| t.load(Ordering::SeqCst));
        let want = if slow { CHUNK } else { buf.len() };
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if slow {
            thread::sleep(TICK);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

fn tinylet(root: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tinylet"))
        .args(args)
        .arg("--root-dir")
        .arg(root)
        .output()
        .unwrap()
}

/// Every blob in the store must hash to its name.
fn assert_blobs_verified(root: &Path) -> Vec<String> {
    let dir = root.join("images/blobs/sha256");
    let mut names = Vec::new();
    for e in fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let data = fs::read(e.path()).unwrap();
        let hex: String = Sha256::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            name,
            "blob {} ({} bytes) does not hash to its name",
            e.path().display(),
            data.len()
        );
        names.push(name);
    }
    names
}

/// `tinylet image pull REFERENCE` in the background, output discarded.
fn spawn_pull(root: &Path, reference: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tinylet"))
        .args(["image", "pull", reference, "--root-dir"])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (up to 30 s) until a temporary blob of `pull` holds at least `min_len` bytes, and
/// returns its path; panics if the pull ends first.
fn wait_for_partial_blob(root: &Path, pull: &mut Child, min_len: u64) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let growing = tmp_entries(root).into_iter().find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("blob"))
                && fs::metadata(p).is_ok_and(|m| m.len() >= min_len)
        });
        if let Some(p) = growing {
            return p;
        }
        if let Some(status) = pull.try_wait().unwrap() {
            panic!("the pull ended ({status}) before a temp blob reached {min_len} bytes");
        }
        assert!(
            Instant::now() < deadline,
            "no temp blob of {min_len} bytes appeared"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

fn tmp_entries(root: &Path) -> Vec<PathBuf> {
    match fs::read_dir(root.join("images/tmp")) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn sigkill_mid_download_leaves_nothing_trusted_and_next_pull_recovers() {
    let reg = Registry::start_plain();
    let (layer_digest, content_digest) = build_big_layout(&reg.dir.join("big-layout"));
    reg.push_layout(&reg.dir.join("big-layout"), "test/big", "1");
    let throttle = Arc::new(AtomicBool::new(true));
    let relay = start_relay(reg.port(), throttle.clone());
    let reference = format!("127.0.0.1:{relay}/test/big:1");

    let dir = PathBuf::from(format!("/tmp/tinylet-pullkill-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let root = dir.join("root");
    fs::create_dir_all(&root).unwrap();

    // First pull: kill -9 once the layer's temp file has grown past 1 MiB.
    let mut child = spawn_pull(&root, &reference);
    let partial = wait_for_partial_blob(&root, &mut child, 1 << 20);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial_len = fs::metadata(&partial).map_or(0, |m| m.len());
    assert!(
        partial_len < LAYER_BYTES as u64,
        "killed too late: {partial_len} bytes"
    );

    // Nothing half-written is trusted: every stored blob hashes to its name, the layer is not
    // among them, no snapshot was committed, and the image is not listed.
    let blobs = assert_blobs_verified(&root);
    assert!(!blobs.contains(&layer_digest.trim_start_matches("sha256:").to_string()));
    assert_eq!(
        fs::read_dir(root.join("images/snapshots")).unwrap().count(),
        0
    );
    let ls = tinylet(&root, &["image", "ls"]);
    assert!(ls.status.success());
    assert!(
        !String::from_utf8_lossy(&ls.stdout).contains("test/big"),
        "a killed pull is listed: {}",
        String::from_utf8_lossy(&ls.stdout)
    );
    // The partial download stays in images/tmp until the next writer starts.
    assert!(
        partial.exists(),
        "expected the partial blob to remain in tmp/"
    );

    // Second pull, full speed: succeeds, sweeps the leftover, and the image resolves.
    throttle.store(false, Ordering::SeqCst);
    let out = tinylet(&root, &["image", "pull", &reference]);
    assert!(
        out.status.success(),
        "second pull failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("pulled"));
    assert!(!partial.exists(), "the next pull left {partial:?} behind");
    assert!(
        tmp_entries(&root).is_empty(),
        "tmp/ not empty: {:?}",
        tmp_entries(&root)
    );
    let blobs = assert_blobs_verified(&root);
    assert!(blobs.contains(&layer_digest.trim_start_matches("sha256:").to_string()));
    let ls = tinylet(&root, &["image", "ls"]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("test/big"));
    let snapshots: Vec<PathBuf> = fs::read_dir(root.join("images/snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(snapshots.len(), 1);
    let random = fs::read(snapshots[0].join("random")).unwrap();
    assert_eq!(sha256_digest(&random), content_digest);

    let _ = fs::remove_dir_all(&dir);
}

/// Pulls share the store (issue 3: `--max-parallel-image-pulls`): a small pull completes while a
/// slow one is still downloading, instead of waiting for its lock; both images end up whole.
#[test]
fn a_pull_does_not_wait_for_another_one() {
    let reg = Registry::start_plain();
    build_big_layout(&reg.dir.join("big-layout"));
    reg.push_layout(&reg.dir.join("big-layout"), "test/big", "1");
    let small = reg.dir.join("small-layout");
    write_image_layout(
        &small,
        &[one_file_tar("hello", b"hello")],
        &["/hello"],
        None,
    );
    reg.push_layout(&small, "test/small", "1");
    let slow = start_relay(reg.port(), Arc::new(AtomicBool::new(true)));
    let fast = start_relay(reg.port(), Arc::new(AtomicBool::new(false)));

    let dir = PathBuf::from(format!("/tmp/tinylet-pullpar-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let root = dir.join("root");
    fs::create_dir_all(&root).unwrap();
    let mut big = spawn_pull(&root, &format!("127.0.0.1:{slow}/test/big:1"));
    // The big pull is downloading (it holds the store lock from here until it ends).
    wait_for_partial_blob(&root, &mut big, 1);
    let out = tinylet(
        &root,
        &["image", "pull", &format!("127.0.0.1:{fast}/test/small:1")],
    );
    assert!(
        out.status.success(),
        "small pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        big.try_wait().unwrap().is_none(),
        "the small pull only finished after the big one"
    );
    let status = big.wait().unwrap();
    assert!(status.success());
    let ls = String::from_utf8_lossy(&tinylet(&root, &["image", "ls"]).stdout).into_owned();
    assert!(ls.contains("test/big") && ls.contains("test/small"), "{ls}");
    assert_blobs_verified(&root);
    assert!(tmp_entries(&root).is_empty(), "{:?}", tmp_entries(&root));
    let _ = fs::remove_dir_all(&dir);
}

//! Pulling from real registries (distribution 2.8 on loopback, see support/registry.rs): TLS with
//! a private CA, Basic and token auth, plain HTTP, multi-arch indexes, pull by digest, re-pulls.
//!
//! The `registry_harness_*` tests check the harness itself with skopeo and curl only; the others
//! drive `tinylet image pull` and `tinylet run`, per the CLI contract:
//!   tinylet image pull REF [--root-dir DIR] [--insecure-registry HOST[:PORT]]... [--ca-file PEM]...
//!                          [--docker-config PATH] [--platform os/arch[/variant]] [--creds USER:PASS]
//! printing `pulled <name> (<id>)`.
//!
//! Run: `cargo test --test registry_pull` (root; scripts/install-deps for the registry tools).

mod support;

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use support::registry::{busybox_digests, sha256_digest, Registry};
use support::*;

const REPO: &str = "test/busybox";
const TAG: &str = "1.0";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `tinylet image pull REF --root-dir <node root> FLAGS...`
fn pull(node: &Node, reference: &str, flags: &[&str]) -> Output {
    let root = node.root.display().to_string();
    let mut args = vec!["image", "pull", reference, "--root-dir", &root];
    args.extend_from_slice(flags);
    node.tinylet(&args)
}

/// Pulls, asserting success; returns stdout.
fn pull_ok(node: &Node, reg: &Registry, reference: &str, flags: &[&str]) -> String {
    let out = pull(node, reference, flags);
    assert!(
        out.status.success(),
        "tinylet image pull {} {:?} failed ({}): {}{}\n--- registry log tail ---\n{}",
        reference,
        flags,
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        support::registry::tail(&reg.log(), 20)
    );
    text(&out.stdout)
}

/// Pulls, asserting failure; returns stderr.
fn pull_err(node: &Node, reference: &str, flags: &[&str]) -> String {
    let out = pull(node, reference, flags);
    assert!(
        !out.status.success(),
        "tinylet image pull {} {:?} succeeded but should not have: {}",
        reference,
        flags,
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// `--ca-file CA --creds USER:PASS` for a TLS registry with auth.
fn tls_flags(reg: &Registry) -> Vec<String> {
    vec![
        "--ca-file".into(),
        reg.ca_file().display().to_string(),
        "--creds".into(),
        reg.creds(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

/// Asserts `pulled <name> (<id>)` names `name` and the image whose config is `config_digest`.
fn assert_pulled(stdout: &str, name: &str, config_digest: &str) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("pulled "))
        .unwrap_or_else(|| panic!("no `pulled ...` line in: {}", stdout));
    assert!(line.contains(name), "{:?} does not name {}", line, name);
    assert!(
        line.contains(&hex(config_digest)[..12]),
        "{:?} does not show the image id {}",
        line,
        config_digest
    );
}

/// `/arch` of every snapshot under `<root>/images/snapshots/`.
fn snapshot_markers(root: &Path) -> Vec<String> {
    let dir = root.join("images/snapshots");
    let mut found: Vec<String> = fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("arch")).ok())
        .collect();
    found.sort();
    found
}

/// The blob store's files and sizes.
fn blob_files(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<_> = fs::read_dir(root.join("images/blobs/sha256"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| (e.path(), e.metadata().unwrap().len()))
        .collect();
    v.sort();
    v
}

/// A node whose daemon gets `extra` flags, with a pod running `reference` (IfNotPresent) that
/// prints a line; waits for the line.
fn run_pod_from(node: &mut Node, reference: &str) {
    node.write_manifest(
        "p.yaml",
        &pod_manifest("pulled")
            .container("c", "echo ran-from-registry; sleep 3600")
            .set("image", reference.into())
            .set("imagePullPolicy", "IfNotPresent".into())
            .yaml(),
    );
    node.wait_log("pulled", "c", "ran-from-registry");
    node.wait_running("pulled");
}

// ---- the harness itself (skopeo and curl only; must always pass) ----

#[test]
fn registry_harness_works() {
    let reg = Registry::start_tls_basic();
    let (bb_manifest, _, _) = busybox_digests();
    let digest = reg.push_busybox(REPO, TAG);
    assert_eq!(digest, bb_manifest, "skopeo preserved the manifest digest");
    assert_eq!(
        sha256_digest(&reg.inspect_raw(&format!("{REPO}:{TAG}"))),
        digest
    );
    assert_eq!(
        sha256_digest(&reg.inspect_raw(&format!("{REPO}@{digest}"))),
        digest
    );

    // Basic auth: 401 with a Basic challenge, 200 with the password, 401 with a wrong one.
    let out = reg.curl("/v2/", &["-i"]);
    let head = text(&out.stdout);
    assert!(head.starts_with("HTTP/1.1 401"), "{}", head);
    assert!(
        head.to_lowercase()
            .contains("www-authenticate: basic realm=\"tinylet-test\""),
        "{}",
        head
    );
    assert_eq!(reg.curl_code("/v2/", &["-u", &reg.creds()]), "200");
    let wrong = format!("{}:wrong", reg.username());
    assert_eq!(reg.curl_code("/v2/", &["-u", &wrong]), "401");

    // The manifest by digest, with the headers a client checks.
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    let out = reg.curl(
        &format!("/v2/{REPO}/manifests/{digest}"),
        &["-i", "-u", &reg.creds(), "-H", accept],
    );
    let resp = text(&out.stdout).to_lowercase();
    assert!(resp.starts_with("http/1.1 200"), "{}", resp);
    assert!(
        resp.contains(&format!("docker-content-digest: {digest}")),
        "{}",
        resp
    );

    // The certificate: trusted with the test CA (above), for 127.0.0.1 and localhost, and by
    // nothing else.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", &reg.url("/v2/")])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(60),
        "curl without the CA: {}",
        text(&out.stderr)
    );
    let localhost = format!("https://localhost:{}/v2/", reg.port());
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(reg.ca_file())
        .arg(&localhost)
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "401", "{}", text(&out.stderr));

    // A docker config.json skopeo accepts.
    let cfg = reg.docker_config();
    let out = std::process::Command::new("skopeo")
        .args(["--insecure-policy", "inspect", "--raw", "--authfile"])
        .arg(&cfg)
        .arg("--cert-dir")
        .arg(reg.ca_file().parent().unwrap())
        .arg(format!("docker://{}", reg.reference(REPO, TAG)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn registry_harness_plain_works() {
    let reg = Registry::start_plain();
    assert!(reg.url("/v2/").starts_with("http://127.0.0.1:"));
    assert_eq!(reg.curl_code("/v2/", &[]), "200");
    let digest = reg.push_busybox(REPO, TAG);
    let out = reg.curl(
        &format!("/v2/{REPO}/manifests/{TAG}"),
        &[
            "-i",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ],
    );
    let resp = text(&out.stdout).to_lowercase();
    assert!(resp.starts_with("http/1.1 200"), "{}", resp);
    assert!(
        resp.contains(&format!("docker-content-digest: {digest}")),
        "{}",
        resp
    );
}

#[test]
fn registry_harness_token_works() {
    let reg = Registry::start_tls_token();
    let realm = reg.token_realm().unwrap();

    // The challenge names our token server and service.
    let out = reg.curl("/v2/", &["-i"]);
    let head = text(&out.stdout);
    assert!(head.starts_with("HTTP/1.1 401"), "{}", head);
    let challenge = format!(
        "Bearer realm=\"{}\",service=\"{}\"",
        realm,
        support::registry::TOKEN_SERVICE
    );
    assert!(head.contains(&challenge), "{} not in {}", challenge, head);

    // skopeo goes through the whole flow: challenge, token with Basic creds, push with it.
    let digest = reg.push_busybox(REPO, TAG);
    let log = reg.token_log();
    assert!(
        log.lines().any(|l| l.contains("user=tinylet")
            && l.contains(&format!("repository:{REPO}:"))
            && l.contains("push")
            && l.ends_with("result=200")),
        "token log:\n{}",
        log
    );

    let token_for = |scope: &str, creds: &str| -> (String, Value) {
        let url = format!(
            "{}?service={}&scope={}",
            realm,
            support::registry::TOKEN_SERVICE,
            scope
        );
        let out = std::process::Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "-u", creds, "--cacert"])
            .arg(reg.ca_file())
            .arg(&url)
            .output()
            .unwrap();
        let s = text(&out.stdout);
        let (body, code) = s.rsplit_once('\n').unwrap();
        (
            code.to_string(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    };
    let manifest = format!("/v2/{REPO}/manifests/{digest}");
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";

    // A pull token for the repository opens its manifest.
    let (code, body) = token_for(&format!("repository:{REPO}:pull"), &reg.creds());
    assert_eq!(code, "200", "{}", body);
    let token = body["token"].as_str().expect("token in the answer");
    assert_eq!(body["access_token"], body["token"]);
    let bearer = format!("Authorization: Bearer {token}");
    assert_eq!(
        reg.curl_code(&manifest, &["-H", &bearer, "-H", accept]),
        "200"
    );

    // The registry really checks the token: another repository's, or a forged one, is refused.
    let (code, other) = token_for("repository:other/thing:pull", &reg.creds());
    assert_eq!(code, "200");
    let other_bearer = format!("Authorization: Bearer {}", other["token"].as_str().unwrap());
    assert_eq!(
        reg.curl_code(&manifest, &["-H", &other_bearer, "-H", accept]),
        "401"
    );
    let (h, c, _) = {
        let mut parts = token.split('.');
        (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        )
    };
    let forged = format!("Authorization: Bearer {h}.{c}.AAAA");
    assert_eq!(
        reg.curl_code(&manifest, &["-H", &forged, "-H", accept]),
        "401"
    );

    // Wrong or no credentials at the token server: 401.
    let wrong = format!("{}:wrong", reg.username());
    let (code, _) = token_for(&format!("repository:{REPO}:pull"), &wrong);
    assert_eq!(code, "401");
    assert!(reg.token_log().contains("result=401 (bad credentials)"));
}

#[test]
fn registry_harness_multiarch_index() {
    let reg = Registry::start_tls_basic();
    let ma = reg.push_multiarch(REPO, "multi");
    let (bb_manifest, _, bb_arch) = busybox_digests();
    assert_eq!(ma.images.len(), 3, "{:?}", ma.images);

    let raw = reg.inspect_raw(&format!("{REPO}:multi"));
    assert_eq!(sha256_digest(&raw), ma.index_digest);
    let index: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                s += &format!("/{v}");
            }
            s
        })
        .collect();
    let native = format!("linux/{bb_arch}");
    assert_eq!(
        platforms,
        [native.as_str(), "linux/arm64/v8", "linux/arm/v7"]
    );
    assert_eq!(ma.image(&native).manifest_digest, bb_manifest);

    // skopeo's own platform choice agrees with the entries.
    for (arch, variant, platform) in [
        ("arm64", "v8", "linux/arm64/v8"),
        ("arm", "v7", "linux/arm/v7"),
        (bb_arch.as_str(), "", native.as_str()),
    ] {
        let mut args = vec!["--override-os", "linux", "--override-arch", arch];
        if !variant.is_empty() {
            args.extend(["--override-variant", variant]);
        }
        let info: Value =
            serde_json::from_slice(&reg.skopeo_inspect(&args, &[], &format!("{REPO}:multi")))
                .unwrap();
        assert_eq!(info["Architecture"], arch, "{}", info);
        // (skopeo's "Digest" is the index's; the layers tell which entry it chose.)
        let manifest: Value = serde_json::from_slice(
            &fs::read(
                ma.dir
                    .join("blobs/sha256")
                    .join(hex(&ma.image(platform).manifest_digest)),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            info["Layers"][0], manifest["layers"][0]["digest"],
            "{}",
            info
        );
    }
    // Each entry's manifest and marker layer is in the registry.
    let gets = reg.blob_gets(REPO);
    for img in ma.images.iter().filter(|i| i.marker.is_some()) {
        let raw = reg.inspect_raw(&format!("{REPO}@{}", img.manifest_digest));
        assert_eq!(sha256_digest(&raw), img.manifest_digest);
        let m: Value = serde_json::from_slice(&raw).unwrap();
        let layer = m["layers"][0]["digest"].as_str().unwrap();
        let code = reg.curl_code(&format!("/v2/{REPO}/blobs/{layer}"), &["-u", &reg.creds()]);
        assert_eq!(code, "200");
    }
    // The access log counts those downloads (pulling_twice_is_idempotent relies on it).
    assert_eq!(reg.blob_gets(REPO), gets + 2, "{}", reg.log());
}

// ---- tinylet image pull (needs the registry client) ----

#[test]
fn pull_tls_basic_then_ls() {
    let reg = Registry::start_tls_basic();
    reg.push_busybox(REPO, TAG);
    let node = Node::create();
    let reference = reg.reference(REPO, TAG);
    let (_, bb_config, _) = busybox_digests();
    let out = pull_ok(&node, &reg, &reference, &strs(&tls_flags(&reg)));
    assert_pulled(&out, &reference, &bb_config);
    let ls = node.tinylet_ok(&["image", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with(&reference) && l.contains(&hex(&bb_config)[..12])),
        "{}",
        ls
    );
}

#[test]
fn pod_runs_image_the_daemon_pulls_over_tls_basic() {
    let reg = Registry::start_tls_basic();
    reg.push_busybox(REPO, TAG);
    let mut node = Node::create();
    node.extra_run_args = vec![
        "--ca-file".into(),
        reg.ca_file().display().to_string(),
        "--docker-config".into(),
        reg.docker_config().display().to_string(),
    ];
    node.start_daemon();
    run_pod_from(&mut node, &reg.reference(REPO, TAG));
    assert!(
        reg.blob_gets(REPO) > 0,
        "the daemon fetched the blobs itself"
    );
}

#[test]
fn pull_with_wrong_password_is_unauthorized() {
    let reg = Registry::start_tls_basic();
    reg.push_busybox(REPO, TAG);
    let node = Node::create();
    let ca = reg.ca_file().display().to_string();
    let wrong = format!("{}:not-the-password", reg.username());
    for flags in [
        vec!["--ca-file", ca.as_str(), "--creds", wrong.as_str()],
        vec!["--ca-file", ca.as_str()],
    ] {
        let err = pull_err(&node, &reg.reference(REPO, TAG), &flags);
        let lower = err.to_lowercase();
        assert!(
            lower.contains("401") || lower.contains("unauthorized"),
            "{:?}: {}",
            flags,
            err
        );
        assert!(
            !err.contains("not-the-password"),
            "the password is in the error: {}",
            err
        );
    }
    assert!(snapshot_markers(&node.root).is_empty());
}

#[test]
fn pull_without_the_ca_is_a_tls_error_naming_the_registry() {
    let reg = Registry::start_tls_basic();
    reg.push_busybox(REPO, TAG);
    let node = Node::create();
    let err = pull_err(&node, &reg.reference(REPO, TAG), &["--creds", &reg.creds()]);
    let lower = err.to_lowercase();
    assert!(err.contains(&reg.host()), "{}", err);
    assert!(
        ["certificate", "tls", "issuer", "x509"]
            .iter()
            .any(|w| lower.contains(w)),
        "not a TLS error: {}",
        err
    );
    assert!(
        !err.contains(reg.password()),
        "the password is in the error: {}",
        err
    );
}

#[test]
fn pull_from_plain_http_on_loopback() {
    let reg = Registry::start_plain();
    reg.push_busybox(REPO, TAG);
    let (_, bb_config, _) = busybox_digests();
    let reference = reg.reference(REPO, TAG);
    // Loopback registries may speak plain HTTP without any flag (as docker and containerd allow).
    let node = Node::create();
    assert_pulled(
        &pull_ok(&node, &reg, &reference, &[]),
        &reference,
        &bb_config,
    );
    // And with the explicit flag, host:port form.
    let node = Node::create();
    let out = pull_ok(
        &node,
        &reg,
        &reference,
        &["--insecure-registry", &reg.host()],
    );
    assert_pulled(&out, &reference, &bb_config);
}

#[test]
fn multiarch_default_platform_gets_this_machines_image_and_runs() {
    let reg = Registry::start_tls_basic();
    let ma = reg.push_multiarch(REPO, "multi");
    let (_, bb_config, bb_arch) = busybox_digests();
    let reference = reg.reference(REPO, "multi");
    let mut node = Node::create();
    let out = pull_ok(&node, &reg, &reference, &strs(&tls_flags(&reg)));
    assert_pulled(&out, &reference, &bb_config);
    assert_eq!(
        ma.image(&format!("linux/{bb_arch}")).config_digest,
        bb_config
    );
    assert!(
        snapshot_markers(&node.root).is_empty(),
        "a marker image was unpacked"
    );
    // The daemon finds it present (IfNotPresent) and runs it without registry flags.
    let gets = reg.blob_gets(REPO);
    node.start_daemon();
    run_pod_from(&mut node, &reference);
    assert_eq!(reg.blob_gets(REPO), gets, "IfNotPresent pulled again");
}

fn pull_platform(platform: &str, entry: &str, marker: &str) {
    let reg = Registry::start_tls_basic();
    let ma = reg.push_multiarch(REPO, "multi");
    let reference = reg.reference(REPO, "multi");
    let node = Node::create();
    let mut flags = tls_flags(&reg);
    flags.extend(["--platform".to_string(), platform.to_string()]);
    let out = pull_ok(&node, &reg, &reference, &strs(&flags));
    let img = ma.image(entry);
    assert_eq!(img.marker.as_deref(), Some(marker));
    assert_pulled(&out, &reference, &img.config_digest);
    assert_eq!(snapshot_markers(&node.root), [format!("{marker}\n")]);
}

#[test]
fn multiarch_platform_linux_arm64() {
    pull_platform("linux/arm64", "linux/arm64/v8", "arm64");
}

#[test]
fn multiarch_platform_linux_arm_v7() {
    pull_platform("linux/arm/v7", "linux/arm/v7", "armv7");
}

#[test]
fn multiarch_platform_not_in_the_index_fails_clearly() {
    let reg = Registry::start_tls_basic();
    reg.push_multiarch(REPO, "multi");
    let node = Node::create();
    let mut flags = tls_flags(&reg);
    flags.extend(["--platform".to_string(), "linux/s390x".to_string()]);
    let err = pull_err(&node, &reg.reference(REPO, "multi"), &strs(&flags));
    assert!(err.contains("linux/s390x"), "{}", err);
    assert!(snapshot_markers(&node.root).is_empty());
    let ls = node.tinylet_ok(&["image", "ls"]);
    assert_eq!(ls.lines().count(), 1, "only the header: {}", ls);
}

#[test]
fn pull_by_digest() {
    let reg = Registry::start_tls_basic();
    let digest = reg.push_busybox(REPO, TAG);
    let (_, bb_config, _) = busybox_digests();
    let reference = format!("{}/{}@{}", reg.host(), REPO, digest);
    let node = Node::create();
    let out = pull_ok(&node, &reg, &reference, &strs(&tls_flags(&reg)));
    assert_pulled(&out, &digest, &bb_config);
    let ls = node.tinylet_ok(&["image", "ls"]);
    assert!(ls.contains(&hex(&bb_config)[..12]), "{}", ls);

    // A digest the registry does not have fails, naming it.
    let missing = sha256_digest(b"no such manifest");
    let err = pull_err(
        &node,
        &format!("{}/{}@{}", reg.host(), REPO, missing),
        &strs(&tls_flags(&reg)),
    );
    assert!(err.contains(hex(&missing)), "{}", err);
}

#[test]
fn pull_with_token_auth() {
    let reg = Registry::start_tls_token();
    reg.push_busybox(REPO, TAG);
    let (_, bb_config, _) = busybox_digests();
    let reference = reg.reference(REPO, TAG);
    let node = Node::create();
    let before = reg.token_log().lines().count();
    let out = pull_ok(&node, &reg, &reference, &strs(&tls_flags(&reg)));
    assert_pulled(&out, &reference, &bb_config);
    let log = reg.token_log();
    let new: Vec<&str> = log.lines().skip(before).collect();
    assert!(
        new.iter()
            .any(|l| l.contains(&format!("repository:{REPO}:pull")) && l.ends_with("result=200")),
        "no pull token was issued:\n{}",
        log
    );

    let node = Node::create();
    let wrong = format!("{}:wrong", reg.username());
    let ca = reg.ca_file().display().to_string();
    let err = pull_err(&node, &reference, &["--ca-file", &ca, "--creds", &wrong]);
    let lower = err.to_lowercase();
    assert!(
        lower.contains("401") || lower.contains("unauthorized"),
        "{}",
        err
    );
}

#[test]
fn pulling_twice_is_idempotent() {
    let reg = Registry::start_tls_basic();
    reg.push_busybox(REPO, TAG);
    let (_, bb_config, _) = busybox_digests();
    let reference = reg.reference(REPO, TAG);
    let node = Node::create();
    let flags = tls_flags(&reg);
    let t0 = Instant::now();
    assert_pulled(
        &pull_ok(&node, &reg, &reference, &strs(&flags)),
        &reference,
        &bb_config,
    );
    let first = t0.elapsed();
    let blobs = blob_files(&node.root);
    let gets = reg.blob_gets(REPO);
    assert!(gets > 0 && !blobs.is_empty());

    let t1 = Instant::now();
    assert_pulled(
        &pull_ok(&node, &reg, &reference, &strs(&flags)),
        &reference,
        &bb_config,
    );
    let second = t1.elapsed();
    assert_eq!(blob_files(&node.root), blobs, "blobs were added or changed");
    assert_eq!(reg.blob_gets(REPO), gets, "blobs were downloaded again");
    assert!(
        second < Duration::from_secs(2) || second < first,
        "second pull took {:?} (first {:?})",
        second,
        first
    );
    let ls = node.tinylet_ok(&["image", "ls"]);
    assert_eq!(ls.lines().count(), 2, "header and one image: {}", ls);
}

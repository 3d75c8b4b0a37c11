//! End-to-end store tests: import from each source format, resolve, remove, failure cleanup.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::*;
use crate::image::digest::sha256_of;
use crate::image::oci::go_arch;
use crate::image::testutil::{gzip, tar_of, TempDir, E};
use crate::image::{ImageConfig, UnpackError, DEFAULT_MAX_ENTRIES};

/// A two-layer image: layer 1 plain, layer 2 gzip'd with a whiteout of a layer-1 file.
struct Fixture {
    l1: Vec<u8>,
    l2_plain: Vec<u8>,
    l2: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl Fixture {
    fn new(motd: &str) -> Fixture {
        let l1 = tar_of(&[
            E::Dir("bin"),
            E::File("bin/hello", b"hi"),
            E::File("etc/old", b"old"),
        ]);
        let l2_plain = tar_of(&[
            E::File("etc/motd", motd.as_bytes()),
            E::File("etc/.wh.old", b""),
        ]);
        let l2 = gzip(&l2_plain);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": go_arch(std::env::consts::ARCH),
            "os": "linux",
            "config": {"Entrypoint": ["/bin/hello"], "Cmd": ["--loud"], "Env": ["PATH=/bin"], "WorkingDir": "/srv", "User": "1000"},
            "rootfs": {"type": "layers", "diff_ids": [sha256_of(&l1), sha256_of(&l2_plain)]},
        }))
        .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_of(&config), "size": config.len()},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_of(&l1), "size": l1.len()},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256_of(&l2), "size": l2.len()},
            ],
        }))
        .unwrap();
        Fixture {
            l1,
            l2_plain,
            l2,
            config,
            manifest,
        }
    }

    fn manifest_digest(&self) -> String {
        sha256_of(&self.manifest)
    }

    fn config_digest(&self) -> String {
        sha256_of(&self.config)
    }

    fn blob_files(&self) -> Vec<(String, Vec<u8>)> {
        [&self.l1, &self.l2, &self.config, &self.manifest]
            .into_iter()
            .map(|b| (format!("blobs/sha256/{}", &sha256_of(b)[7..]), b.clone()))
            .collect()
    }

    /// An OCI layout whose index points at the manifest with the given annotations.
    fn oci_layout(&self, annotations: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        let ann: BTreeMap<_, _> = annotations.iter().cloned().collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": self.manifest_digest(), "size": self.manifest.len(), "annotations": ann,
            }],
        });
        let mut files = self.blob_files();
        files.push((
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
        files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
        files
    }

    /// `docker save` layout: plain layers in <id>/layer.tar, one of them via a symlink.
    fn docker_archive(&self, tags: &[&str]) -> Vec<u8> {
        let config_name = format!("{}.json", &self.config_digest()[7..]);
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_name, "RepoTags": tags, "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
        }]))
        .unwrap();
        tar_of(&[
            E::Dir("aaa"),
            E::File("aaa/layer.tar", &self.l1),
            E::File("real/layer.tar", &self.l2_plain),
            E::Dir("bbb"),
            E::Symlink("bbb/layer.tar", "../real/layer.tar"),
            E::File(&config_name, &self.config),
            E::File("manifest.json", &manifest),
        ])
    }
}

fn write_tree(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
}

fn tar_tree(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let entries: Vec<E> = files.iter().map(|(n, d)| E::File(n, d)).collect();
    tar_of(&entries)
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

struct Env {
    _t: TempDir,
    store: ImageStore,
    src: std::path::PathBuf,
    images: std::path::PathBuf,
}

fn env(tag: &str) -> Env {
    let t = TempDir::new(tag);
    let store = ImageStore::open(&t.path().join("state")).unwrap();
    let src = t.path().join("src");
    fs::create_dir(&src).unwrap();
    let images = t.path().join("state/images");
    Env {
        _t: t,
        store,
        src,
        images,
    }
}

#[test]
fn imports_an_oci_layout_dir_and_resolves_every_form() {
    let e = env("oci-dir");
    let fx = Fixture::new("welcome");
    let layout = e.src.join("layout");
    write_tree(
        &layout,
        &fx.oci_layout(&[("org.opencontainers.image.ref.name", "busybox:1.36")]),
    );

    let imported = e.store.import(&layout, None).unwrap();
    assert_eq!(imported.len(), 1);
    let img = &imported[0];
    assert_eq!(img.name, "docker.io/library/busybox:1.36");
    assert_eq!(img.id, fx.config_digest());
    assert_eq!(
        img.repo_digest,
        format!("docker.io/library/busybox@{}", fx.manifest_digest())
    );
    assert_eq!(img.size, (fx.l1.len() + fx.l2.len()) as u64);
    assert_eq!(
        img.config,
        ImageConfig {
            entrypoint: vec!["/bin/hello".into()],
            cmd: vec!["--loud".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: "/srv".into(),
            user: "1000".into(),
        }
    );
    assert_eq!(fs::read(img.rootfs.join("bin/hello")).unwrap(), b"hi");
    assert_eq!(fs::read(img.rootfs.join("etc/motd")).unwrap(), b"welcome");
    assert!(!img.rootfs.join("etc/old").exists(), "whiteout applied");

    let m = fx.manifest_digest();
    for r in [
        "busybox:1.36".to_string(),
        "docker.io/library/busybox:1.36".into(),
        format!("busybox@{m}"),
        format!("docker.io/library/busybox:1.36@{m}"),
        fx.config_digest(),
        m.clone(),
    ] {
        let got = e
            .store
            .resolve(&r)
            .unwrap()
            .unwrap_or_else(|| panic!("{r} not resolved"));
        assert_eq!(got.name, img.name);
    }
    for r in [
        "busybox".to_string(),
        format!("alpine@{m}"),
        "busybox:1.35".into(),
    ] {
        assert!(e.store.resolve(&r).unwrap().is_none(), "{r} resolved");
    }
    assert!(matches!(
        e.store.resolve("Bad:Ref"),
        Err(ImageError::InvalidReference { .. })
    ));

    // Idempotent: same result, nothing duplicated, nothing left in tmp.
    let again = e.store.import(&layout, None).unwrap();
    assert_eq!(again[0].id, img.id);
    assert_eq!(count(&e.images.join("blobs/sha256")), 4);
    assert_eq!(count(&e.images.join("snapshots")), 1);
    assert_eq!(count(&e.images.join("tmp")), 0);
    assert_eq!(e.store.list().unwrap().len(), 1);
}

#[test]
fn imports_a_gzipped_oci_archive_with_a_tag_only_name() {
    let e = env("oci-archive");
    let fx = Fixture::new("m");
    let archive = e.src.join("image.tar.gz");
    fs::write(
        &archive,
        gzip(&tar_tree(&fx.oci_layout(&[(
            "org.opencontainers.image.ref.name",
            "1.36",
        )]))),
    )
    .unwrap();

    match e.store.import(&archive, None) {
        Err(err @ ImageError::NameRequired { .. }) => {
            assert!(err.to_string().contains("\"1.36\" is only a tag"))
        }
        other => panic!("{other:?}"),
    }
    let imported = e
        .store
        .import(&archive, Some("registry.local:5000/team/app:2"))
        .unwrap();
    assert_eq!(imported[0].name, "registry.local:5000/team/app:2");
    assert!(e
        .store
        .resolve("registry.local:5000/team/app:2")
        .unwrap()
        .is_some());
    assert_eq!(fs::read(imported[0].rootfs.join("etc/motd")).unwrap(), b"m");
    assert_eq!(count(&e.images.join("tmp")), 0);
}

#[test]
fn imports_a_docker_archive_sharing_layers() {
    let e = env("docker");
    let fx = Fixture::new("docker");
    let archive = e.src.join("save.tar");
    fs::write(&archive, fx.docker_archive(&["myapp:1.0", "myapp:latest"])).unwrap();

    let imported = e.store.import(&archive, None).unwrap();
    let names: Vec<&str> = imported.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "docker.io/library/myapp:1.0",
            "docker.io/library/myapp:latest"
        ]
    );
    assert_eq!(imported[0].id, fx.config_digest());
    assert_eq!(
        fs::read(imported[0].rootfs.join("etc/motd")).unwrap(),
        b"docker"
    );
    assert!(!imported[0].rootfs.join("etc/old").exists());
    assert!(e.store.resolve("myapp").unwrap().is_some());

    // The same image from an OCI layout: layer 1 is byte-identical and stored once.
    let layout = e.src.join("layout");
    write_tree(
        &layout,
        &fx.oci_layout(&[("io.containerd.image.name", "docker.io/library/busybox:1.36")]),
    );
    e.store.import(&layout, None).unwrap();
    let blobs = e.images.join("blobs/sha256");
    // config, l1, plain l2, synthesized manifest + gzip'd l2, OCI manifest.
    assert_eq!(count(&blobs), 6);
    assert_eq!(
        count(&e.images.join("snapshots")),
        1,
        "same config, one snapshot"
    );
}

#[test]
fn remove_drops_unshared_blobs_and_snapshot() {
    let e = env("remove");
    let a = Fixture::new("a");
    let b = Fixture::new("b"); // shares layer 1 with `a`
    let (la, lb) = (e.src.join("a"), e.src.join("b"));
    write_tree(
        &la,
        &a.oci_layout(&[("org.opencontainers.image.ref.name", "app-a:1")]),
    );
    write_tree(
        &lb,
        &b.oci_layout(&[("org.opencontainers.image.ref.name", "app-b:1")]),
    );
    let ia = e.store.import(&la, None).unwrap().remove(0);
    let ib = e.store.import(&lb, None).unwrap().remove(0);
    let blobs = e.images.join("blobs/sha256");
    assert_eq!(count(&blobs), 7);

    e.store.remove("app-a:1").unwrap();
    assert!(e.store.resolve("app-a:1").unwrap().is_none());
    assert!(e.store.resolve(&ia.id).unwrap().is_none());
    assert!(!ia.rootfs.exists());
    for gone in [a.manifest_digest(), a.config_digest(), sha256_of(&a.l2)] {
        assert!(!blobs.join(&gone[7..]).exists(), "{gone} kept");
    }
    assert!(
        blobs.join(&sha256_of(&a.l1)[7..]).exists(),
        "shared layer removed"
    );
    assert_eq!(fs::read(ib.rootfs.join("etc/motd")).unwrap(), b"b");

    e.store.remove("docker.io/library/app-b:1").unwrap();
    assert_eq!(count(&blobs), 0);
    assert_eq!(count(&e.images.join("snapshots")), 0);
    assert!(matches!(
        e.store.remove("app-b:1"),
        Err(ImageError::NotFound { .. })
    ));
}

#[test]
fn repointed_names_leave_a_dangling_image_removable_by_id() {
    let e = env("dangling");
    let (a, b) = (Fixture::new("a"), Fixture::new("b"));
    let (la, lb) = (e.src.join("a"), e.src.join("b"));
    write_tree(&la, &a.oci_layout(&[]));
    write_tree(&lb, &b.oci_layout(&[]));
    let old = e.store.import(&la, Some("app")).unwrap().remove(0);
    let new = e.store.import(&lb, Some("app")).unwrap().remove(0);
    assert_eq!(e.store.resolve("app").unwrap().unwrap().id, new.id);
    assert!(old.rootfs.exists(), "a running container may still use it");
    e.store.remove(&old.id).unwrap();
    assert!(!old.rootfs.exists());
    assert!(new.rootfs.exists());
}

#[test]
fn corrupt_blobs_fail_the_import_and_leave_nothing() {
    let e = env("corrupt");
    let fx = Fixture::new("x");
    let layout = e.src.join("layout");
    let mut files = fx.oci_layout(&[("org.opencontainers.image.ref.name", "x:1")]);
    let l2_name = format!("blobs/sha256/{}", &sha256_of(&fx.l2)[7..]);
    for (name, data) in files.iter_mut() {
        if *name == l2_name {
            let last = data.len() - 1;
            data[last] ^= 0xff;
        }
    }
    write_tree(&layout, &files);
    match e.store.import(&layout, None) {
        Err(ImageError::DigestMismatch { what, .. }) => assert!(what.contains(&sha256_of(&fx.l2))),
        other => panic!("{other:?}"),
    }
    assert!(e.store.list().unwrap().is_empty());
    assert_eq!(count(&e.images.join("blobs/sha256")), 0);
    assert_eq!(count(&e.images.join("tmp")), 0);
}

#[test]
fn bomb_limits_name_the_layer() {
    let t = TempDir::new("limits");
    let store = ImageStore::open(t.path()).unwrap().with_limits(Limits {
        max_unpacked_bytes: 6,
        max_entries: DEFAULT_MAX_ENTRIES,
    });
    // Layer 1 unpacks to 5 bytes, layer 2 adds 7.
    let fx = Fixture::new("too big");
    let layout = t.path().join("layout");
    write_tree(&layout, &fx.oci_layout(&[]));
    let err = store.import(&layout, Some("x")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("layer 2/2") && msg.contains(&sha256_of(&fx.l2)),
        "{msg}"
    );
    assert!(
        matches!(&err, ImageError::Layer { source, .. } if matches!(**source, UnpackError::SizeLimit { .. }))
    );
    assert_eq!(count(&t.path().join("images/snapshots")), 0);
}

#[test]
fn picks_this_platform_from_a_nested_index() {
    let e = env("platform");
    let fx = Fixture::new("mine");
    let arch = go_arch(std::env::consts::ARCH);
    let other = if arch == "amd64" { "arm64" } else { "amd64" };
    let missing = sha256_of(b"another platform's manifest, absent from the layout");
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": missing, "size": 10,
             "platform": {"os": "linux", "architecture": other}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": fx.manifest_digest(),
             "size": fx.manifest.len(), "platform": {"os": "linux", "architecture": arch}},
        ],
    }))
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256_of(&nested), "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": "ghcr.io/org/multi:1"},
    }]});
    let mut files = fx.blob_files();
    files.push((format!("blobs/sha256/{}", &sha256_of(&nested)[7..]), nested));
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    let layout = e.src.join("layout");
    write_tree(&layout, &files);

    let imported = e.store.import(&layout, None).unwrap();
    assert_eq!(imported[0].name, "ghcr.io/org/multi:1");
    assert_eq!(
        imported[0].repo_digest,
        format!("ghcr.io/org/multi@{}", fx.manifest_digest())
    );
}

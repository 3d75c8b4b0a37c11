//! Hostile layers (issue 3, point 4): each crafted tarball of tests/data/tars/ (see its README.md)
//! is wrapped into an OCI layout and fed to `tinylet image import`. Every case must end either in
//! a refusal that names the entry, or in a snapshot that holds everything it wrote: nothing may
//! appear in, change in, or vanish from the host directories the layers aim at.
//!
//! Watched host state: `/tmp/tinylet-hostile-canary` (absolute targets; holds only `victim`),
//! the test's private `<dir>/outside` (relative targets climbing 4 levels from the snapshot),
//! and /etc/passwd (content and link count).
//!
//! Run: `cargo test --test hostile_images` (as root, like CI: ownership is applied then).

mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use support::oci::write_image_layout;

const CANARY: &str = "/tmp/tinylet-hostile-canary";
const VICTIM: &[u8] = b"victim\n";
const OUTSIDE_REL: &str = "../../../../outside";

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tars")
        .join(name)
}

/// The canary directory with its victim file, made once per test binary.
fn canary() -> &'static Path {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        fs::create_dir_all(CANARY).unwrap();
        let victim = Path::new(CANARY).join("victim");
        if fs::read(&victim).ok().as_deref() != Some(VICTIM) {
            fs::write(&victim, VICTIM).unwrap();
        }
    });
    Path::new(CANARY)
}

fn passwd_state() -> (Vec<u8>, u64) {
    let data = fs::read("/etc/passwd").unwrap();
    let nlink = fs::metadata("/etc/passwd").unwrap().nlink();
    (data, nlink)
}

/// One import of crafted layers into a private root; the directory goes when it drops.
struct Case {
    name: String,
    dir: PathBuf,
    root: PathBuf,
    outside: PathBuf,
    out: Output,
    passwd_before: (Vec<u8>, u64),
}

impl Drop for Case {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Builds `<dir>/layout`, an OCI layout of one image whose layers are the given corpus files in
/// order (gzip'd when named `.gz`), with matching diff_ids, and imports it.
fn import(layers: &[&str]) -> Case {
    import_with(layers, &[])
}

/// `import` with extra `tinylet image import` flags.
fn import_with(layers: &[&str], flags: &[&str]) -> Case {
    canary();
    let passwd_before = passwd_state();
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from(format!("/tmp/tinylet-hostile-{}-{}", std::process::id(), n));
    let _ = fs::remove_dir_all(&dir);
    let root = dir.join("root");
    let outside = dir.join("outside");
    let layout = dir.join("layout");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&outside).unwrap();
    build_layout(&layout, layers);
    let out = Command::new(env!("CARGO_BIN_EXE_tinylet"))
        .args(["image", "import"])
        .arg(&layout)
        .arg("--root-dir")
        .arg(&root)
        .args(flags)
        .output()
        .expect("running tinylet");
    let case = Case {
        name: layers.join("+"),
        dir,
        root,
        outside,
        out,
        passwd_before,
    };
    case.assert_host_untouched();
    case
}

fn build_layout(layout: &Path, layers: &[&str]) {
    let data: Vec<Vec<u8>> = layers
        .iter()
        .map(|name| fs::read(corpus(name)).unwrap_or_else(|e| panic!("reading {name}: {e}")))
        .collect();
    write_image_layout(
        layout,
        &data,
        &["/bin/true"],
        Some("127.0.0.1:1/hostile/layer:1"),
    );
}

impl Case {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    fn assert_host_untouched(&self) {
        let mut canary: Vec<String> = fs::read_dir(CANARY)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        canary.sort();
        assert_eq!(
            canary,
            ["victim"],
            "{}: something was written to {CANARY}\n{}",
            self.name,
            self.stderr()
        );
        let victim = Path::new(CANARY).join("victim");
        assert_eq!(
            fs::read(&victim).unwrap(),
            VICTIM,
            "{}: victim changed",
            self.name
        );
        assert_eq!(
            fs::metadata(&victim).unwrap().nlink(),
            1,
            "{}: victim got a hardlink",
            self.name
        );
        let outside: Vec<_> = fs::read_dir(&self.outside).unwrap().collect();
        assert!(
            outside.is_empty(),
            "{}: something was written to {}: {:?}",
            self.name,
            self.outside.display(),
            outside
        );
        assert!(
            passwd_state() == self.passwd_before,
            "{}: /etc/passwd changed (content or link count)",
            self.name
        );
    }

    /// The import failed, named `needle` (the entry) in its error, and left no snapshot or image.
    fn assert_refused(&self, needles: &[&str]) {
        let err = self.stderr();
        assert!(
            !self.out.status.success(),
            "{}: import succeeded but should have been refused: {}{}",
            self.name,
            self.stdout(),
            err
        );
        for needle in needles {
            assert!(
                err.contains(needle),
                "{}: error does not mention {needle:?}: {err}",
                self.name
            );
        }
        let snapshots = self.root.join("images/snapshots");
        assert_eq!(
            fs::read_dir(&snapshots).unwrap().count(),
            0,
            "{}: a refused import left a snapshot",
            self.name
        );
        assert_eq!(
            fs::read_dir(self.root.join("images/tmp")).unwrap().count(),
            0,
            "{}: a refused import left temp files",
            self.name
        );
        let ls = self.tinylet(&["image", "ls"]);
        assert!(
            !ls.contains("hostile/layer"),
            "{}: refused image listed: {ls}",
            self.name
        );
    }

    /// The import succeeded; returns the snapshot directory. Checks that the snapshot holds only
    /// directories, regular files and symlinks, and no hardlink shared with the host.
    fn assert_contained(&self) -> PathBuf {
        assert!(
            self.out.status.success(),
            "{}: import failed: {}",
            self.name,
            self.stderr()
        );
        // One snapshot directory (beside it, at most its list of device nodes).
        let snapshots: Vec<PathBuf> = fs::read_dir(self.root.join("images/snapshots"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.to_string_lossy().ends_with(".devices.json"))
            .collect();
        assert_eq!(snapshots.len(), 1, "{}: {:?}", self.name, snapshots);
        let snap = snapshots.into_iter().next().unwrap();
        let (passwd_dev, passwd_ino) = {
            let m = fs::metadata("/etc/passwd").unwrap();
            (m.dev(), m.ino())
        };
        for path in walk(&snap) {
            let m = fs::symlink_metadata(&path).unwrap();
            let t = m.file_type();
            assert!(
                t.is_dir() || t.is_file() || t.is_symlink(),
                "{}: {} is a {:?}",
                self.name,
                path.display(),
                t
            );
            assert!(
                !(m.dev() == passwd_dev && m.ino() == passwd_ino),
                "{}: {} is /etc/passwd",
                self.name,
                path.display()
            );
        }
        assert!(self.tinylet(&["image", "ls"]).contains("hostile/layer"));
        snap
    }

    fn tinylet(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_tinylet"))
            .args(args)
            .arg("--root-dir")
            .arg(&self.root)
            .output()
            .unwrap();
        assert!(out.status.success(), "tinylet {args:?}: {:?}", out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Every path below `dir` (not following symlinks).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

fn assert_regular(path: &Path, content: &[u8]) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(m.is_file(), "{} is not a regular file", path.display());
    assert_eq!(fs::read(path).unwrap(), content, "{}", path.display());
}

fn assert_link(path: &Path, target: &str) {
    assert_eq!(
        fs::read_link(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        Path::new(target),
        "symlink {} changed",
        path.display()
    );
}

// ---- path traversal ----

#[test]
fn dotdot_is_refused() {
    import(&["dotdot.tar"]).assert_refused(&["pwned-dotdot", "climbs above"]);
}

#[test]
fn dotdot_behind_a_directory_is_refused() {
    import(&["dotdot-nested.tar"]).assert_refused(&["pwned-dotdot-nested", "climbs above"]);
}

#[test]
fn absolute_path_lands_inside_the_snapshot() {
    let case = import(&["absolute.tar"]);
    let snap = case.assert_contained();
    assert_regular(
        &snap.join("tmp/tinylet-hostile-canary/pwned-absolute"),
        b"pwned\n",
    );
}

#[test]
fn gnu_long_name_with_dotdot_is_refused() {
    import(&["gnu-longname-dotdot.tar"]).assert_refused(&["pwned-longname", "climbs above"]);
}

// ---- symlinks and hardlinks ----

#[test]
fn write_through_absolute_symlink_stays_inside() {
    let case = import(&["symlink-abs-write.tar"]);
    let snap = case.assert_contained();
    assert_link(&snap.join("escape"), CANARY);
    assert_regular(
        &snap.join("tmp/tinylet-hostile-canary/pwned-symlink-abs"),
        b"pwned\n",
    );
}

#[test]
fn write_through_relative_symlinks_stays_inside() {
    let case = import(&["symlink-rel-write.tar"]);
    let snap = case.assert_contained();
    assert_link(&snap.join("escape"), OUTSIDE_REL);
    assert_link(
        &snap.join("deep"),
        &format!("{}tmp/tinylet-hostile-canary", "../".repeat(12)),
    );
    // `..` stops at the snapshot root, so both land in the snapshot's own directories.
    assert_regular(&snap.join("outside/pwned-symlink-rel"), b"pwned\n");
    assert_regular(
        &snap.join("tmp/tinylet-hostile-canary/pwned-symlink-deep"),
        b"pwned\n",
    );
}

#[test]
fn symlink_then_write_across_two_layers_stays_inside() {
    let case = import(&["chain-layer1.tar", "chain-layer2.tar"]);
    let snap = case.assert_contained();
    assert_link(&snap.join("lib"), CANARY);
    assert_link(&snap.join("rel"), OUTSIDE_REL);
    assert_regular(
        &snap.join("tmp/tinylet-hostile-canary/pwned-chain"),
        b"pwned\n",
    );
    assert_regular(&snap.join("outside/pwned-chain"), b"pwned\n");
    // The whiteout `lib/.wh.victim` resolved inside too: the host's victim is checked by
    // assert_host_untouched in import().
}

#[test]
fn hardlink_to_host_passwd_is_refused() {
    import(&["hardlink-passwd.tar"]).assert_refused(&["passwd-link", "does not exist"]);
}

#[test]
fn hardlink_climbing_to_passwd_is_refused() {
    import(&["hardlink-dotdot.tar"]).assert_refused(&["passwd-link", "climbs above"]);
}

#[test]
fn hardlink_through_outward_symlink_is_refused() {
    import(&["hardlink-via-symlink.tar"]).assert_refused(&["victim-link", "does not exist"]);
}

// ---- special files ----

#[test]
fn devices_and_fifos_are_dropped() {
    let case = import(&["devices.tar"]);
    let snap = case.assert_contained();
    // Listed beside the snapshot for privileged containers, never created in it.
    let listed = fs::read_to_string(format!("{}.devices.json", snap.display())).unwrap();
    for node in ["/dev/evil-null", "/dev/evil-sda", "/evil-fifo"] {
        assert!(listed.contains(node), "{node} not in {listed}");
    }
    assert!(snap.join("dev").is_dir());
    for gone in [
        "dev/evil-null",
        "dev/evil-sda",
        "evil-fifo",
        "tmp/tinylet-hostile-canary/pwned-device",
    ] {
        assert!(
            fs::symlink_metadata(snap.join(gone)).is_err(),
            "{gone} exists"
        );
    }
}

/// The layer blobs of an OCI layout with one image (in order).
fn layout_layers(layout: &Path) -> Vec<Vec<u8>> {
    let blob = |digest: &str| {
        fs::read(
            layout
                .join("blobs/sha256")
                .join(digest.trim_start_matches("sha256:")),
        )
        .unwrap_or_else(|e| panic!("reading blob {digest}: {e}"))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| blob(l["digest"].as_str().unwrap()))
        .collect()
}

#[test]
fn privileged_pods_get_the_image_device_nodes_and_no_one_else_does() {
    // busybox, with devices.tar on top.
    let mut layers = layout_layers(support::image_layout());
    layers.push(fs::read(corpus("devices.tar")).unwrap());
    let mut node = support::Node::create();
    let layout = node.dir.join("devices-image");
    let name = "127.0.0.1:1/test/devices:1";
    write_image_layout(&layout, &layers, &["sh"], Some(name));
    node.tinylet_ok(&["image", "import", &layout.display().to_string()]);
    node.start_daemon();
    let script = "ls -ln /dev/evil-null /dev/evil-sda /evil-fifo 2>&1; echo listed; sleep 3600";
    let pod = |pod: &str, privileged: bool| {
        support::pod_manifest(pod)
            .container("c", script)
            .set("image", name.into())
            .set("imagePullPolicy", "Never".into())
            .set(
                "env",
                serde_json::json!([{"name": "PATH", "value": "/bin:/usr/bin"}]),
            )
            .set(
                "securityContext",
                serde_json::json!({"privileged": privileged}),
            )
            .yaml()
    };
    node.write_manifest(
        "pods.yaml",
        &format!("{}---\n{}", pod("priv", true), pod("plain", false)),
    );
    let privileged = node.wait_log("priv", "c", "listed");
    let null = privileged
        .lines()
        .find(|l| l.contains("/dev/evil-null"))
        .unwrap_or_else(|| panic!("{privileged}"));
    assert!(
        null.starts_with('c') && null.contains("1,") && null.contains('3'),
        "{null}"
    );
    let sda = privileged
        .lines()
        .find(|l| l.contains("/dev/evil-sda"))
        .unwrap();
    assert!(sda.starts_with('b') && sda.contains("8,"), "{sda}");
    let fifo = privileged
        .lines()
        .find(|l| l.contains("/evil-fifo"))
        .unwrap();
    assert!(fifo.starts_with('p'), "{fifo}");
    let plain = node.wait_log("plain", "c", "listed");
    for path in ["/dev/evil-null", "/dev/evil-sda", "/evil-fifo"] {
        let line = plain
            .lines()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("{plain}"));
        assert!(line.contains("No such file"), "{line}");
    }
    // The shared snapshot itself never holds them.
    let snapshots = node.root.join("images/snapshots");
    for e in fs::read_dir(&snapshots).unwrap().flatten() {
        if e.path().is_dir() {
            assert!(fs::symlink_metadata(e.path().join("dev/evil-null")).is_err());
        }
    }
}

// ---- header desync ----

#[test]
fn pax_size_override_wins_over_ustar_size() {
    // ustar says 0, PAX says 1024: tar-rs honours PAX, so the hidden `..` entry inside the data
    // is never parsed as a header; `cover` holds it as content.
    let case = import(&["pax-size-desync.tar"]);
    let snap = case.assert_contained();
    let cover = fs::read(snap.join("cover")).unwrap();
    assert_eq!(cover.len(), 1024);
    assert!(cover.starts_with(b"../../../../outside/pwned-pax"));
    assert_eq!(
        walk(&snap),
        [snap.join("cover")],
        "only cover may be unpacked"
    );
}

#[test]
fn pax_size_zero_exposes_hidden_entry_which_is_refused() {
    // The reverse desync: PAX says 0, so the data behind `cover` is parsed as the next header,
    // the `..` entry, which the path check refuses.
    import(&["pax-size-desync-rev.tar"]).assert_refused(&["pwned-pax", "climbs above"]);
}

#[test]
fn huge_size_field_is_refused_by_the_size_limit() {
    // 1 TiB claimed (base-256 size field) with 1 KiB behind it: refused before reading.
    import(&["huge-size-truncated.tar"]).assert_refused(&["exceeds the limit"]);
}

#[test]
fn huge_pax_size_is_refused_by_the_size_limit() {
    // ustar says 0, PAX says 1 TiB: the cap must count the size tar-rs actually reads.
    import(&["pax-huge-size.tar"]).assert_refused(&["exceeds the limit"]);
}

#[test]
fn truncated_entry_is_refused() {
    // 1 MiB claimed, 1 KiB present: the entry is named, not just "unexpected EOF".
    import(&["truncated.tar"]).assert_refused(&["\"short\"", "archive ends after 1024"]);
}

// ---- whiteouts ----

#[test]
fn whiteout_of_dotdot_is_refused() {
    import(&["whiteout-dotdot-name.tar"]).assert_refused(&[".wh..", "whiteout names no entry"]);
}

#[test]
fn whiteout_of_dotdot_in_a_subdirectory_is_refused() {
    import(&["whiteout-dotdot-deep.tar"]).assert_refused(&["sub/.wh..", "whiteout names no entry"]);
}

#[test]
fn whiteout_above_the_root_is_refused() {
    import(&["whiteout-parent.tar"]).assert_refused(&["../.wh.outside", "climbs above"]);
}

// ---- decompression bomb ----

#[test]
fn gzip_bomb_is_refused_by_a_lower_limit() {
    // The same 16 KiB that inflates to 16 MiB, with the cap lowered to 8 MiB: refused, and
    // nothing of it kept.
    import_with(&["gzip-bomb.tar.gz"], &["--image-max-unpacked-size", "8Mi"])
        .assert_refused(&["exceeds the limit"]);
}

#[test]
fn gzip_bomb_unpacks_within_the_default_limit() {
    // 16 KiB of gzip inflating to 16 MiB: below the default 8 GiB cap.
    assert!(fs::metadata(corpus("gzip-bomb.tar.gz")).unwrap().len() < 20 * 1024);
    let case = import(&["gzip-bomb.tar.gz"]);
    let snap = case.assert_contained();
    let m = fs::symlink_metadata(snap.join("zeros")).unwrap();
    assert!(m.is_file());
    assert_eq!(m.len(), 16 << 20);
}

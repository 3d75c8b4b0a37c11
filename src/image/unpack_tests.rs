//! Hostile-layer tests for unpack.rs. Each asserts where bytes really landed.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;
use crate::image::digest::sha256_of;
use crate::image::testutil::{gzip, tar_of, TempDir, E};

fn apply_with(root: &Path, limits: Limits, layers: &[Vec<u8>]) -> Result<(), UnpackError> {
    apply_to(&mut Unpacker::new(root, limits), layers)
}

fn apply_to(u: &mut Unpacker, layers: &[Vec<u8>]) -> Result<(), UnpackError> {
    for l in layers {
        let digest = sha256_of(l);
        u.apply_layer(
            &l[..],
            &ExpectedLayer {
                digest: &digest,
                size: l.len() as u64,
                diff_id: None,
            },
        )?;
    }
    Ok(())
}

fn apply(root: &Path, layers: &[Vec<u8>]) -> Result<(), UnpackError> {
    apply_with(root, Limits::default(), layers)
}

/// A scratch root plus a sibling "outside" directory that must never be written.
fn sandbox(tag: &str) -> (TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = TempDir::new(tag);
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&outside).unwrap();
    (t, root, outside)
}

fn assert_unsafe(r: Result<(), UnpackError>, entry: &str) {
    match r {
        Err(UnpackError::UnsafePath { entry: e, .. }) => assert_eq!(e, entry),
        other => panic!("expected UnsafePath for {entry}, got {other:?}"),
    }
}

#[test]
fn dotdot_entries_fail_and_write_nothing_outside() {
    let (t, root, _) = sandbox("dotdot");
    assert_unsafe(
        apply(&root, &[tar_of(&[E::File("../evil", b"x")])]),
        "../evil",
    );
    assert_unsafe(
        apply(&root, &[tar_of(&[E::File("a/../../evil", b"x")])]),
        "a/../../evil",
    );
    assert_unsafe(
        apply(&root, &[tar_of(&[E::File("/../evil", b"x")])]),
        "/../evil",
    );
    assert!(!t.path().join("evil").exists());
    // ".." that stays inside is just a path.
    apply(&root, &[tar_of(&[E::File("a/../b", b"ok")])]).unwrap();
    assert_eq!(fs::read(root.join("b")).unwrap(), b"ok");
}

#[test]
fn absolute_names_are_relative_to_the_root() {
    let (_t, root, _) = sandbox("abs");
    apply(&root, &[tar_of(&[E::File("/etc/hostname", b"in")])]).unwrap();
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"in");
}

#[test]
fn absolute_symlink_in_parent_is_clamped() {
    let (_t, root, outside) = sandbox("symabs");
    let target = outside.to_str().unwrap();
    apply(
        &root,
        &[tar_of(&[
            E::Symlink("esc", target),
            E::File("esc/pwned", b"x"),
        ])],
    )
    .unwrap();
    assert!(!outside.join("pwned").exists());
    let inside = root.join(target.trim_start_matches('/')).join("pwned");
    assert_eq!(fs::read(inside).unwrap(), b"x");
    // The symlink itself is kept verbatim for the container.
    assert_eq!(fs::read_link(root.join("esc")).unwrap(), outside);
}

#[test]
fn relative_symlink_in_parent_is_clamped() {
    let (_t, root, outside) = sandbox("symrel");
    let up = format!(
        "{}{}",
        "../".repeat(10),
        outside.to_str().unwrap().trim_start_matches('/')
    );
    apply(
        &root,
        &[tar_of(&[E::Symlink("up", &up), E::File("up/pwned", b"x")])],
    )
    .unwrap();
    assert!(!outside.join("pwned").exists());
    assert!(root
        .join(outside.strip_prefix("/").unwrap())
        .join("pwned")
        .is_file());
    // "../" then a name: one level up from the root is still the root.
    apply(
        &root,
        &[tar_of(&[E::Symlink("dd", ".."), E::File("dd/dd/x", b"y")])],
    )
    .unwrap();
    assert_eq!(fs::read(root.join("x")).unwrap(), b"y");
}

#[test]
fn symlink_then_write_across_layers_lands_inside() {
    let (_t, root, _) = sandbox("chain");
    let host_passwd = fs::read("/etc/passwd").ok();
    let l1 = tar_of(&[E::Symlink("a", "/etc")]);
    let l2 = tar_of(&[E::File("a/passwd", b"pwned")]);
    apply(&root, &[l1, l2]).unwrap();
    assert_eq!(fs::read(root.join("etc/passwd")).unwrap(), b"pwned");
    assert_eq!(fs::read("/etc/passwd").ok(), host_passwd);
    assert!(fs::symlink_metadata(root.join("a"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn final_symlink_is_replaced_not_followed() {
    let (_t, root, outside) = sandbox("final");
    let victim = outside.join("victim");
    fs::write(&victim, b"original").unwrap();
    let l1 = tar_of(&[E::Symlink("f", victim.to_str().unwrap())]);
    let l2 = tar_of(&[E::File("f", b"new")]);
    apply(&root, &[l1, l2]).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"original");
    let meta = fs::symlink_metadata(root.join("f")).unwrap();
    assert!(meta.is_file());
    assert_eq!(fs::read(root.join("f")).unwrap(), b"new");
}

#[test]
fn deferred_directory_metadata_never_follows_a_later_symlink() {
    let (_t, root, outside) = sandbox("deferred");
    let victim = outside.join("victim");
    fs::create_dir(&victim).unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
    let before = fs::metadata(&victim).unwrap();
    // "x/victim" gets mode 0755 at the end of the layer, by which time "x" points outside.
    let layer = tar_of(&[
        E::Dir("x"),
        E::Dir("x/victim"),
        E::Symlink("x", outside.to_str().unwrap()),
    ]);
    apply(&root, &[layer]).unwrap();
    let after = fs::metadata(&victim).unwrap();
    assert_eq!(after.permissions().mode() & 0o7777, 0o700);
    assert_eq!(after.mtime(), before.mtime());
    assert!(fs::symlink_metadata(root.join("x"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn hardlinks_must_target_regular_files_inside() {
    let (_t, root, outside) = sandbox("hardlink");
    let secret = outside.join("secret");
    fs::write(&secret, b"s").unwrap();
    let bad_target = |r: Result<(), UnpackError>| {
        assert!(
            matches!(r, Err(UnpackError::HardlinkTarget { .. })),
            "{r:?}"
        )
    };

    bad_target(apply(
        &root,
        &[tar_of(&[E::Hardlink("h", "../outside/secret")])],
    ));
    // Through an absolute symlink: resolved inside the root, where nothing exists.
    bad_target(apply(
        &root,
        &[tar_of(&[
            E::Symlink("s", outside.to_str().unwrap()),
            E::Hardlink("h", "s/secret"),
        ])],
    ));
    // To a symlink pointing out: not a regular file.
    bad_target(apply(
        &root,
        &[tar_of(&[
            E::Symlink("p", secret.to_str().unwrap()),
            E::Hardlink("h2", "p"),
        ])],
    ));
    assert_eq!(fs::metadata(&secret).unwrap().nlink(), 1);
    assert!(!root.join("h").exists() && !root.join("h2").exists());

    apply(
        &root,
        &[tar_of(&[E::File("a", b"data"), E::Hardlink("b", "a")])],
    )
    .unwrap();
    assert_eq!(
        fs::metadata(root.join("a")).unwrap().ino(),
        fs::metadata(root.join("b")).unwrap().ino()
    );
}

#[test]
fn device_nodes_and_fifos_are_listed_not_created() {
    let (_t, root, _) = sandbox("dev");
    let mut u = Unpacker::new(&root, Limits::default());
    let layers = [
        tar_of(&[
            E::Dir("dev"),
            E::Char("dev/null"),
            E::Char("dev/zero"),
            E::Fifo("fifo"),
            E::File("keep", b"k"),
        ]),
        // A later layer hides one device and puts a file where another was.
        tar_of(&[E::File("dev/.wh.null", b""), E::File("fifo", b"now a file")]),
    ];
    apply_to(&mut u, &layers).unwrap();
    assert!(fs::symlink_metadata(root.join("dev/null")).is_err());
    assert!(fs::symlink_metadata(root.join("dev/zero")).is_err());
    assert_eq!(fs::read(root.join("fifo")).unwrap(), b"now a file");
    assert!(root.join("keep").is_file());
    let paths: Vec<String> = u.device_nodes().into_iter().map(|d| d.path).collect();
    assert_eq!(paths, ["/dev/zero"]);
    assert_eq!(u.device_nodes()[0].kind, "c");
}

#[test]
fn whiteouts_and_opaque_dirs_hide_lower_layers_only() {
    let (_t, root, _) = sandbox("whiteout");
    let l1 = tar_of(&[
        E::Dir("d"),
        E::File("d/a", b"a"),
        E::File("d/b", b"b"),
        E::File("x", b"x"),
        E::Dir("o"),
        E::File("o/old", b"old"),
        E::File("o/sub/deep", b"deep"),
        E::Dir("p"),
        E::File("p/old", b"old"),
    ]);
    let l2 = tar_of(&[
        E::File("d/.wh.a", b""),
        E::File(".wh.x", b""),
        // Same-layer entries written before the opaque marker survive it.
        E::File("o/new", b"new"),
        E::File("o/sub/newdeep", b"nd"),
        E::File("o/.wh..wh..opq", b""),
        // Marker first, the usual order.
        E::File("p/.wh..wh..opq", b""),
        E::File("p/fresh", b"f"),
        E::File("d/.wh.missing", b""),
    ]);
    apply(&root, &[l1, l2]).unwrap();
    assert!(!root.join("d/a").exists() && root.join("d/b").is_file());
    assert!(!root.join("x").exists());
    assert!(root.join("o/new").is_file() && root.join("o/sub/newdeep").is_file());
    assert!(!root.join("o/old").exists() && !root.join("o/sub/deep").exists());
    assert!(!root.join("p/old").exists() && root.join("p/fresh").is_file());
    for dir in ["", "d", "o", "p"] {
        for e in fs::read_dir(root.join(dir)).unwrap() {
            let name = e.unwrap().file_name();
            assert!(
                !name.to_string_lossy().starts_with(".wh."),
                "whiteout {name:?} written"
            );
        }
    }
}

#[test]
fn entry_types_replace_each_other() {
    let (_t, root, _) = sandbox("replace");
    let l1 = tar_of(&[E::Dir("p"), E::File("p/child", b"c"), E::File("q", b"q")]);
    let l2 = tar_of(&[E::File("p", b"now a file"), E::Dir("q"), E::Dir("q")]);
    apply(&root, &[l1, l2]).unwrap();
    assert!(root.join("p").is_file());
    assert!(root.join("q").is_dir());
}

#[test]
fn modes_owners_and_times_are_applied() {
    let (_t, root, _) = sandbox("meta");
    apply(
        &root,
        &[tar_of(&[
            E::FileMode("bin/su", b"#!", 0o4755, 1000),
            E::Dir("bin"),
        ])],
    )
    .unwrap();
    let m = fs::metadata(root.join("bin/su")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!(
        fs::metadata(root.join("bin")).unwrap().mtime(),
        1_600_000_000
    );
    if nix::unistd::geteuid().is_root() {
        assert_eq!((m.uid(), m.gid()), (1000, 1000));
    }
}

#[test]
fn gzip_layers_are_detected_by_magic_and_diff_id_checked() {
    let (_t, root, _) = sandbox("gzip");
    let plain = tar_of(&[E::File("hello", b"world")]);
    let gz = gzip(&plain);
    let (digest, diff_id) = (sha256_of(&gz), sha256_of(&plain));
    let mut u = Unpacker::new(&root, Limits::default());
    u.apply_layer(
        &gz[..],
        &ExpectedLayer {
            digest: &digest,
            size: gz.len() as u64,
            diff_id: Some(&diff_id),
        },
    )
    .unwrap();
    assert_eq!(fs::read(root.join("hello")).unwrap(), b"world");

    let wrong = sha256_of(b"other");
    let r = u.apply_layer(
        &gz[..],
        &ExpectedLayer {
            digest: &digest,
            size: gz.len() as u64,
            diff_id: Some(&wrong),
        },
    );
    assert!(
        matches!(r, Err(UnpackError::DiffIdMismatch { .. })),
        "{r:?}"
    );
}

#[test]
fn digest_and_size_mismatches_are_rejected() {
    let (_t, root, _) = sandbox("digest");
    let layer = tar_of(&[E::File("f", b"x")]);
    let mut u = Unpacker::new(&root, Limits::default());
    let wrong = sha256_of(b"not the layer");
    let r = u.apply_layer(
        &layer[..],
        &ExpectedLayer {
            digest: &wrong,
            size: layer.len() as u64,
            diff_id: None,
        },
    );
    assert!(
        matches!(r, Err(UnpackError::DigestMismatch { .. })),
        "{r:?}"
    );
    let right = sha256_of(&layer);
    let r = u.apply_layer(
        &layer[..],
        &ExpectedLayer {
            digest: &right,
            size: 1,
            diff_id: None,
        },
    );
    assert!(matches!(r, Err(UnpackError::SizeMismatch { .. })), "{r:?}");
}

#[test]
fn decompression_bombs_hit_the_limits() {
    let (_t, root, _) = sandbox("bomb");
    let zeros = vec![0u8; 4 << 20];
    // Best compression, as a real bomb would use (zlib-rs' fastest level does not squeeze zeros
    // nearly as hard).
    let bomb = {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&tar_of(&[E::File("a", &zeros), E::File("b", &zeros)]))
            .unwrap();
        enc.finish().unwrap()
    };
    assert!(bomb.len() < 64 << 10, "the bomb should compress well");
    let limits = Limits {
        max_unpacked_bytes: 6 << 20,
        max_entries: 100,
    };
    let r = apply_with(&root, limits, &[bomb]);
    assert!(matches!(r, Err(UnpackError::SizeLimit { .. })), "{r:?}");
    assert!(!root.join("b").exists());

    let many: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = many.iter().map(|n| E::File(n, b"")).collect();
    let limits = Limits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 10,
    };
    let r = apply_with(&root, limits, &[tar_of(&entries)]);
    assert!(
        matches!(r, Err(UnpackError::EntryLimit { limit: 10 })),
        "{r:?}"
    );
}

#[test]
fn unsupported_compression_is_named() {
    let (_t, root, _) = sandbox("xz");
    let fake = vec![0xfd, b'7', b'z', b'X', b'Z', 0x00, 0, 0];
    match apply(&root, &[fake]) {
        Err(e @ UnpackError::UnsupportedCompression { kind: "xz" }) => {
            assert!(e.to_string().contains("xz"))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn zstd_layers_in_one_or_several_frames_unpack() {
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};
    let (_t, root, _) = sandbox("zstd");
    let one_frame = compress_to_vec(
        &tar_of(&[E::File("etc/a", b"one")])[..],
        CompressionLevel::Fastest,
    );
    apply(&root, &[one_frame]).unwrap();
    assert_eq!(fs::read(root.join("etc/a")).unwrap(), b"one");
    // Two frames: the tar split in the middle, each half compressed on its own.
    let (_t2, root2, _) = sandbox("zstd2");
    let whole = tar_of(&[E::File("etc/a", b"one"), E::File("etc/b", b"two")]);
    let (h1, h2) = whole.split_at(whole.len() / 2);
    let mut two_frames = compress_to_vec(h1, CompressionLevel::Fastest);
    two_frames.extend(compress_to_vec(h2, CompressionLevel::Fastest));
    apply(&root2, &[two_frames]).unwrap();
    assert_eq!(fs::read(root2.join("etc/b")).unwrap(), b"two");
}

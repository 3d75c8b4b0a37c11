//! Image GC: least-recently-used selection against a fake disk, thresholds, minimum age, in-use
//! protection, `lastUsed` persistence and index files from before GC.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::time::Duration;

use super::*;
use crate::image::testutil::{write_oci_layout, TempDir};
use crate::image::Image;

const GIB: u64 = 1 << 30;

struct Env {
    dir: TempDir,
    store: ImageStore,
}

impl Env {
    fn new(tag: &str) -> Env {
        let dir = TempDir::new(tag);
        let store = ImageStore::open(&dir.path().join("root")).unwrap();
        Env { dir, store }
    }

    /// Imports a distinct image (its content is `payload`) under `name`.
    fn import(&self, name: &str, payload: &[u8]) -> Image {
        let layout = self.dir.path().join(format!("layout-{}", now_secs_nanos()));
        write_oci_layout(&layout, payload);
        let mut images = self.store.import(&layout, Some(name)).unwrap();
        fs::remove_dir_all(&layout).unwrap();
        images.remove(0)
    }

    fn names(&self) -> Vec<String> {
        self.store
            .list()
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect()
    }

    fn index(&self) -> IndexFile {
        index::load(&self.store.paths.index).unwrap()
    }

    /// A disk of 100 GiB holding `base_pct` of other data plus 10 GiB per image id in the
    /// store: removals move usage in steps of 10% that the real bytes freed (KiB) never cover.
    fn usage(&self, base_pct: u64) -> impl FnMut() -> Result<DiskUsage, ImageError> + '_ {
        move || {
            let ids: BTreeSet<String> = self
                .index()
                .all_entries()
                .map(|e| e.config.clone())
                .collect();
            let used = (base_pct + 10 * ids.len() as u64).min(100) * GIB;
            Ok(DiskUsage {
                capacity: 100 * GIB,
                available: 100 * GIB - used,
            })
        }
    }
}

fn now_secs_nanos() -> u128 {
    crate::clock::now_unix().as_nanos()
}

fn policy(high_pct: u8, low_pct: u8, min_age_secs: u64) -> GcPolicy {
    GcPolicy {
        high_pct,
        low_pct,
        min_age: Duration::from_secs(min_age_secs),
    }
}

fn refs(r: &[&str]) -> HashSet<String> {
    r.iter().map(|s| s.to_string()).collect()
}

fn removed_names(report: &[Removed]) -> Vec<String> {
    report.iter().map(|r| r.label()).collect()
}

#[test]
fn used_pct_and_amount_to_free_match_the_kubelet() {
    let u = DiskUsage {
        capacity: 1000,
        available: 95,
    };
    assert_eq!(u.used_pct(), 91);
    assert_eq!(u.bytes_to_free(80), 200 - 95);
    assert_eq!(u.bytes_to_free(95), 0);
    let empty = DiskUsage {
        capacity: 0,
        available: 0,
    };
    assert_eq!(empty.used_pct(), 0);
}

#[test]
fn collect_removes_least_recently_used_first_and_stops_at_the_low_threshold() {
    let env = Env::new("gc-lru");
    for n in ["a", "b", "c", "d"] {
        env.import(&format!("{n}:1"), n.as_bytes());
    }
    let t = now_secs();
    assert!(env.store.mark_used_at("a:1", t + 300).unwrap());
    assert!(env.store.mark_used_at("b:1", t + 100).unwrap());
    assert!(env.store.mark_used_at("c:1", t + 200).unwrap());
    // d was never used: it goes first, then b (oldest use); then usage is at 70%.
    let report = env
        .store
        .collect_at(&refs(&[]), &policy(85, 70, 0), &mut env.usage(50), t + 1000)
        .unwrap();
    assert!(report.triggered);
    assert_eq!(report.before.used_pct(), 90);
    assert_eq!(report.after.used_pct(), 70);
    assert_eq!(
        removed_names(&report.removed),
        ["docker.io/library/d:1", "docker.io/library/b:1"]
    );
    assert_eq!(
        report.removed[0].usage_after.map(|u| u.used_pct()),
        Some(80)
    );
    assert!(report.removed.iter().all(|r| r.freed > 0), "{report:?}");
    assert_eq!(
        report.freed,
        report.removed.iter().map(|r| r.freed).sum::<u64>()
    );
    assert_eq!(
        env.names(),
        ["docker.io/library/a:1", "docker.io/library/c:1"]
    );
}

#[test]
fn collect_never_removes_images_in_use_by_name_id_or_repo_digest() {
    let env = Env::new("gc-inuse");
    let a = env.import("a:1", b"a");
    let b = env.import("b:1", b"b");
    let c = env.import("c:1", b"c");
    env.import("d:1", b"d");
    // The forms the kubelet passes: a spec's image as written, a record's repo digest, an id.
    let in_use = refs(&["a:1", &b.repo_digest, &c.id, "not a valid reference!"]);
    // 100% used and a low threshold of 0: everything that may go, goes.
    let report = env
        .store
        .collect_at(&in_use, &policy(85, 0, 0), &mut env.usage(60), now_secs())
        .unwrap();
    assert_eq!(removed_names(&report.removed), ["docker.io/library/d:1"]);
    assert_eq!(report.after.used_pct(), 90);
    assert_eq!(
        env.names(),
        [a.name.as_str(), b.name.as_str(), c.name.as_str()]
    );
    for image in [&a, &b, &c] {
        assert!(image.rootfs.is_dir(), "{} lost its snapshot", image.name);
    }
}

#[test]
fn a_name_in_use_keeps_every_name_of_its_image_id() {
    let env = Env::new("gc-alias");
    env.import("a:1", b"same");
    env.import("alias:1", b"same");
    env.import("b:1", b"b");
    let report = env
        .store
        .collect_at(
            &refs(&["a:1"]),
            &policy(10, 0, 0),
            &mut env.usage(0),
            now_secs(),
        )
        .unwrap();
    assert_eq!(removed_names(&report.removed), ["docker.io/library/b:1"]);
    assert_eq!(
        env.names(),
        ["docker.io/library/a:1", "docker.io/library/alias:1"]
    );
}

#[test]
fn a_dangling_image_is_kept_by_its_repo_digest() {
    let env = Env::new("gc-dangling");
    let old = env.import("x:1", b"old");
    let new = env.import("x:1", b"new");
    assert_eq!(env.index().dangling.len(), 1);
    // A container still runs the old image: its record holds the old repo digest, not the name.
    let in_use = refs(&[&old.repo_digest]);
    let report = env
        .store
        .collect_at(&in_use, &policy(10, 0, 0), &mut env.usage(0), now_secs())
        .unwrap();
    assert_eq!(removed_names(&report.removed), ["docker.io/library/x:1"]);
    assert!(old.rootfs.is_dir());
    assert!(!new.rootfs.exists());
    assert_eq!(env.index().dangling.len(), 1);
    // Once nothing uses it, it is removed by id.
    let report = env
        .store
        .collect_at(&refs(&[]), &policy(10, 0, 0), &mut env.usage(0), now_secs())
        .unwrap();
    assert_eq!(removed_names(&report.removed), [old.id.as_str()]);
    assert!(!old.rootfs.exists());
    assert!(env.index().dangling.is_empty());
}

#[test]
fn images_younger_than_the_minimum_age_are_spared() {
    let env = Env::new("gc-age");
    env.import("a:1", b"a");
    let now = now_secs();
    let report = env
        .store
        .collect_at(&refs(&[]), &policy(85, 80, 120), &mut env.usage(80), now)
        .unwrap();
    assert!(report.triggered);
    assert!(report.removed.is_empty());
    assert_eq!(env.names().len(), 1);
    let report = env
        .store
        .collect_at(
            &refs(&[]),
            &policy(85, 80, 120),
            &mut env.usage(80),
            now + 121,
        )
        .unwrap();
    assert_eq!(removed_names(&report.removed), ["docker.io/library/a:1"]);
}

#[test]
fn nothing_happens_below_the_high_threshold_or_when_disabled() {
    let env = Env::new("gc-off");
    env.import("a:1", b"a");
    let later = now_secs() + 3600;
    // 80% < 85%.
    let report = env
        .store
        .collect_at(&refs(&[]), &policy(85, 80, 0), &mut env.usage(70), later)
        .unwrap();
    assert!(!report.triggered && report.removed.is_empty());
    // 100% used, but a high threshold of 100 turns GC off.
    let report = env
        .store
        .collect_at(&refs(&[]), &policy(100, 80, 0), &mut env.usage(90), later)
        .unwrap();
    assert!(!report.triggered && report.removed.is_empty());
    assert_eq!(env.names().len(), 1);
}

#[test]
fn collect_stops_once_the_bytes_freed_cover_the_excess() {
    let env = Env::new("gc-freed");
    for n in ["a", "b", "c"] {
        env.import(&format!("{n}:1"), &vec![n.as_bytes()[0]; 64 << 10]);
    }
    // A usage figure that does not move (statvfs lagging behind deletions): 90% of 10 kB used,
    // 2 kB over the low threshold. Removing one image (64 KiB) covers it.
    let mut frozen = || {
        Ok(DiskUsage {
            capacity: 10_000,
            available: 1_000,
        })
    };
    let report = env
        .store
        .collect_at(&refs(&[]), &policy(85, 70, 0), &mut frozen, now_secs())
        .unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert!(report.freed >= 64 << 10, "{report:?}");
    assert_eq!(env.names().len(), 2);
}

#[test]
fn collect_refreshes_last_use_of_images_in_use() {
    let env = Env::new("gc-refresh");
    env.import("a:1", b"a");
    env.import("b:1", b"b");
    let t = now_secs();
    env.store.mark_used_at("b:1", t).unwrap();
    // a runs all along (never marked since its start long ago); b was used at t.
    let later = t + 7200;
    env.store
        .collect_at(
            &refs(&["a:1"]),
            &policy(85, 80, 0),
            &mut env.usage(0),
            later,
        )
        .unwrap();
    let entry = &env.index().images["docker.io/library/a:1"];
    assert_eq!(entry.last_used, Some(later));
    // Now a's pod is gone: b, used before a was last seen in use, goes first.
    let report = env
        .store
        .collect_at(&refs(&[]), &policy(10, 0, 0), &mut env.usage(85), later + 1)
        .unwrap();
    assert_eq!(
        removed_names(&report.removed),
        ["docker.io/library/b:1", "docker.io/library/a:1"]
    );
}

#[test]
fn mark_used_persists_and_skips_writes_within_a_minute() {
    let env = Env::new("gc-mark");
    let a = env.import("a:1", b"a");
    let t = now_secs();
    assert!(env.store.mark_used_at("a:1", t).unwrap());
    let raw: serde_json::Value =
        serde_json::from_slice(&fs::read(&env.store.paths.index).unwrap()).unwrap();
    assert_eq!(raw["images"]["docker.io/library/a:1"]["lastUsed"], t);
    assert!(raw["images"]["docker.io/library/a:1"]["added"]
        .as_u64()
        .is_some());
    assert!(!env.store.mark_used_at("a:1", t + 30).unwrap());
    assert!(!env.store.mark_used_at(&a.id, t + 59).unwrap());
    assert!(env.store.mark_used_at(&a.id, t + 61).unwrap());
    // Another process (a fresh store handle) sees it.
    let reopened = ImageStore::open(&env.dir.path().join("root")).unwrap();
    let index = index::load(&reopened.paths.index).unwrap();
    assert_eq!(
        index.images["docker.io/library/a:1"].last_used,
        Some(t + 61)
    );
    // Unknown images are not an error: nothing to record.
    assert!(!env.store.mark_used_at("nothere:1", t + 200).unwrap());
    // A pull in progress does not stop it (pulls share the store lock)...
    let pulling = index::SharedLock::acquire(&env.store.paths.lock).unwrap();
    assert!(env.store.mark_used_at("a:1", t + 250).unwrap());
    drop(pulling);
    // ...but one holding the index lock for long (a GC pass) is not waited for: the use goes
    // unrecorded rather than delay the container.
    let lock = index::IndexLock::acquire(&env.store.paths.index_lock).unwrap();
    assert!(!env.store.mark_used_at("a:1", t + 350).unwrap());
    drop(lock);
    assert_eq!(
        env.index().images["docker.io/library/a:1"].last_used,
        Some(t + 250)
    );
    assert!(env.store.mark_used_at("a:1", t + 350).unwrap());
}

#[test]
fn reimporting_keeps_the_usage_history() {
    let env = Env::new("gc-reimport");
    env.import("a:1", b"a");
    let before = env.index().images["docker.io/library/a:1"].clone();
    let t = now_secs() + 500;
    env.store.mark_used_at("a:1", t).unwrap();
    env.import("a:1", b"a");
    env.import("alias:1", b"a");
    let index = env.index();
    for name in ["docker.io/library/a:1", "docker.io/library/alias:1"] {
        assert_eq!(index.images[name].added, before.added, "{name}");
        assert_eq!(index.images[name].last_used, Some(t), "{name}");
    }
    assert!(index.dangling.is_empty());
}

#[test]
fn an_index_from_before_gc_loads_and_counts_as_old_and_unused() {
    let env = Env::new("gc-oldindex");
    env.import("a:1", b"a");
    env.import("b:1", b"b");
    // Strip the new fields, as a tinylet without GC wrote the file.
    let mut raw: serde_json::Value =
        serde_json::from_slice(&fs::read(&env.store.paths.index).unwrap()).unwrap();
    for (_, e) in raw["images"].as_object_mut().unwrap().iter_mut() {
        let e = e.as_object_mut().unwrap();
        e.remove("added");
        e.remove("lastUsed");
    }
    fs::write(&env.store.paths.index, serde_json::to_vec(&raw).unwrap()).unwrap();
    assert_eq!(env.names().len(), 2);
    assert!(env.store.resolve("a:1").unwrap().is_some());
    let t = now_secs();
    assert!(env.store.mark_used_at("a:1", t).unwrap());
    // Unknown age is old: even a day's minimum age does not spare b, never used, first to go.
    let report = env
        .store
        .collect_at(&refs(&[]), &policy(85, 80, 86_400), &mut env.usage(70), t)
        .unwrap();
    assert_eq!(removed_names(&report.removed), ["docker.io/library/b:1"]);
    assert_eq!(env.names(), ["docker.io/library/a:1"]);
}

#[test]
fn prune_removes_every_unused_name_and_only_content_nothing_else_needs() {
    let env = Env::new("gc-prune");
    let a = env.import("a:1", b"a");
    env.import("alias:1", b"a");
    let b = env.import("b:1", b"b");
    let old = env.import("x:1", b"old");
    let x = env.import("x:1", b"new");
    let report = env.store.prune(&refs(&["a:1", &x.repo_digest])).unwrap();
    let mut removed = removed_names(&report.removed);
    removed.sort();
    let mut expected = vec![
        "docker.io/library/alias:1".to_string(),
        "docker.io/library/b:1".to_string(),
        old.id.clone(),
    ];
    expected.sort();
    assert_eq!(removed, expected);
    // alias:1 shares a's content, which a still needs: removing the name freed nothing.
    let alias = report
        .removed
        .iter()
        .find(|r| r.names == ["docker.io/library/alias:1"])
        .unwrap();
    assert_eq!(alias.freed, 0);
    assert!(report.freed > 0);
    assert_eq!(
        report.freed,
        report.removed.iter().map(|r| r.freed).sum::<u64>()
    );
    assert!(a.rootfs.is_dir() && x.rootfs.is_dir());
    assert!(!b.rootfs.exists() && !old.rootfs.exists());
    assert_eq!(
        env.names(),
        ["docker.io/library/a:1", "docker.io/library/x:1"]
    );
    assert!(env.index().dangling.is_empty());
    let blobs = env.store.blobs.list().unwrap();
    assert_eq!(
        blobs.len(),
        6,
        "a's and x's manifest, config and layer only"
    );
    // Nothing left to prune.
    let again = env.store.prune(&refs(&["a:1", "x:1"])).unwrap();
    assert!(again.removed.is_empty() && again.freed == 0);
}

#[test]
fn disk_usage_reads_the_store_filesystem() {
    let env = Env::new("gc-statvfs");
    let u = env.store.disk_usage().unwrap();
    assert!(u.capacity > 0 && u.available <= u.capacity, "{u:?}");
    assert!(u.used_pct() <= 100);
}

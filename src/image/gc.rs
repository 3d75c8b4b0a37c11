//! Image garbage collection with the kubelet's semantics. Images remember when a container last
//! used them (`mark_used`); when the filesystem holding the store is fuller than the high
//! threshold, `collect` removes images no pod uses, least recently used first, until usage is
//! back at the low threshold, sparing images younger than a minimum age. `prune` removes every
//! unused image at once (`tinylet image prune`).
//!
//! What is in use comes from the caller as image references in any form `resolve` accepts:
//! names, repo digests (`repo@sha256:..`) and ids (`sha256:<config>`). The kubelet passes the
//! images its pods' specs name plus the name and repo digest of every container record. A
//! dangling image (its name re-pointed by a later pull or import) is kept by a digest or an id,
//! which is what the records of containers still running it hold.
//!
//! The units differ on purpose. `collect` frees disk, so it works on image ids (config digests)
//! like the kubelet: an id with any name in use is in use, and removing an id removes all its
//! names. `prune` removes names: a name no pod uses goes even if a used name shares its content,
//! which then stays on disk (the sweep deletes only what no remaining name needs).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use super::index::{self, Entry, IndexFile, IndexLock, WriteLock};
use super::store::{matches, selector, Selector};
use super::{ImageError, ImageStore};

/// A container start within this long of the last recorded use does not rewrite index.json:
/// a crash-looping container would otherwise write it on every restart.
const MARK_USED_INTERVAL_SECS: u64 = 60;

/// How stale an in-use image's `lastUsed` may get before a GC pass refreshes it. An hour orders
/// images by last use well enough, and spares flash a rewrite of index.json every GC period.
const IN_USE_REFRESH_SECS: u64 = 3600;

/// Size and free space of the filesystem holding the store, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    pub capacity: u64,
    pub available: u64,
}

impl DiskUsage {
    /// Percent used, computed as the kubelet does: 100 - available * 100 / capacity.
    pub fn used_pct(&self) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        let available = u128::from(self.available.min(self.capacity));
        100 - (available * 100 / u128::from(self.capacity)) as u64
    }

    /// Bytes to delete for usage to drop to `low_pct` (the kubelet's amountToFree).
    pub fn bytes_to_free(&self, low_pct: u8) -> u64 {
        let keep_free = u128::from(self.capacity) * u128::from(100 - low_pct.min(100)) / 100;
        (keep_free as u64).saturating_sub(self.available)
    }
}

/// `--image-gc-high-threshold`, `--image-gc-low-threshold` and the minimum image age.
#[derive(Debug, Clone, Copy)]
pub struct GcPolicy {
    pub high_pct: u8,
    pub low_pct: u8,
    /// The kubelet's imageMinimumGCAge: an image recorded more recently is never collected.
    pub min_age: Duration,
}

impl GcPolicy {
    /// A high threshold of 100 turns image GC off, as in the kubelet.
    pub fn disabled(&self) -> bool {
        self.high_pct >= 100
    }
}

/// One image removed by `prune` or `collect`.
#[derive(Debug, Clone)]
pub struct Removed {
    /// "sha256:<config>".
    pub id: String,
    /// The names removed with it; empty for a dangling image.
    pub names: Vec<String>,
    /// Disk space its blobs and snapshot took (0 if another image still needs them).
    pub freed: u64,
    /// Usage measured right after the removal (`collect` only).
    pub usage_after: Option<DiskUsage>,
}

impl Removed {
    /// The names, or the id for a dangling image: what a log line or the CLI shows.
    pub fn label(&self) -> String {
        if self.names.is_empty() {
            self.id.clone()
        } else {
            self.names.join(", ")
        }
    }
}

#[derive(Debug, Default)]
pub struct PruneReport {
    pub removed: Vec<Removed>,
    pub freed: u64,
}

#[derive(Debug)]
pub struct GcReport {
    pub before: DiskUsage,
    /// Usage after the last removal (`before` if nothing was removed).
    pub after: DiskUsage,
    /// Usage was at or above the high threshold (and GC is enabled).
    pub triggered: bool,
    pub removed: Vec<Removed>,
    pub freed: u64,
}

/// The references that keep images.
struct InUse(Vec<Selector>);

impl InUse {
    /// References that do not parse cannot name a stored image; they keep nothing.
    fn new(refs: &HashSet<String>) -> InUse {
        InUse(refs.iter().filter_map(|r| selector(r).ok()).collect())
    }

    fn keeps_named(&self, name: &str, entry: &Entry) -> bool {
        self.0.iter().any(|s| matches(s, name, entry))
    }

    /// A dangling image has no name, so no repository to check a repo digest against: any
    /// reference with its digest keeps it (erring on the side of keeping).
    fn keeps_dangling(&self, entry: &Entry) -> bool {
        self.0.iter().any(|s| match s {
            Selector::Digest { digest, .. } => {
                entry.manifest == *digest || entry.index.as_ref() == Some(digest)
            }
            // An id matches whatever the name; a name never matches a nameless image.
            Selector::Id(_) => matches(s, "", entry),
            Selector::Name(_) => false,
        })
    }
}

/// One image id (config digest) with everything the index holds for it.
#[derive(Debug)]
struct ImageUse {
    pub id: String,
    pub names: Vec<String>,
    pub size: u64,
    /// Earliest `added` of its entries; 0 when unknown (an index from before GC).
    pub added: u64,
    /// Latest `lastUsed` of its entries; 0 when never used.
    pub last_used: u64,
    pub in_use: bool,
}

/// The images of `index`, least recently used first (never used first, then older first).
fn by_last_use(index: &IndexFile, in_use: &InUse) -> Vec<ImageUse> {
    let mut ids: BTreeMap<&str, ImageUse> = BTreeMap::new();
    let entries = index
        .images
        .iter()
        .map(|(n, e)| (Some(n), e, in_use.keeps_named(n, e)))
        .chain(
            index
                .dangling
                .iter()
                .map(|e| (None, e, in_use.keeps_dangling(e))),
        );
    for (name, e, used) in entries {
        let u = ids.entry(&e.config).or_insert_with(|| ImageUse {
            id: e.config.clone(),
            names: Vec::new(),
            size: 0,
            added: u64::MAX,
            last_used: 0,
            in_use: false,
        });
        u.names.extend(name.cloned());
        u.size = u.size.max(e.size);
        u.added = u.added.min(e.added.unwrap_or(0));
        u.last_used = u.last_used.max(e.last_used.unwrap_or(0));
        u.in_use |= used;
    }
    let mut out: Vec<ImageUse> = ids.into_values().collect();
    out.sort_by(|a, b| (a.last_used, a.added, &a.id).cmp(&(b.last_used, b.added, &b.id)));
    out
}

/// Sets `lastUsed` to `now` on the entries `selected` picks whose last use is older than
/// `interval` (or in the future: the clock was set back). Returns whether any changed.
fn touch(
    index: &mut IndexFile,
    now: u64,
    interval: u64,
    selected: impl Fn(Option<&str>, &Entry) -> bool,
) -> bool {
    let mut changed = false;
    let named = index.images.iter_mut().map(|(n, e)| (Some(n.as_str()), e));
    let dangling = index.dangling.iter_mut().map(|e| (None, e));
    for (name, e) in named.chain(dangling) {
        let stale = e.last_used.is_none_or(|t| t.abs_diff(now) >= interval);
        if stale && selected(name, e) {
            e.last_used = Some(now);
            changed = true;
        }
    }
    changed
}

fn now_secs() -> u64 {
    crate::clock::now_unix().as_secs()
}

impl ImageStore {
    /// Size and free space of the filesystem the store is on (statvfs).
    pub fn disk_usage(&self) -> Result<DiskUsage, ImageError> {
        let dir = &self.paths.snapshots;
        let st = nix::sys::statvfs::statvfs(dir.as_path())
            .map_err(|e| ImageError::io("measuring the filesystem of", dir, e.into()))?;
        let unit = st.fragment_size() as u64;
        Ok(DiskUsage {
            capacity: (st.blocks() as u64).saturating_mul(unit),
            available: (st.blocks_available() as u64).saturating_mul(unit),
        })
    }

    /// Records that a container is starting from the image `reference` names (for image GC's
    /// least-recently-used order). Cheap: no write within a minute of the last recorded use, and
    /// never waits for the store's lock — a pull or import can hold it for minutes, and a
    /// container start must not wait for that; the use then goes unrecorded, which only makes
    /// the image look older (while it runs, GC keeps it in use anyway). Ok(true) if written.
    pub fn mark_used(&self, reference: &str) -> Result<bool, ImageError> {
        self.mark_used_at(reference, now_secs())
    }

    pub(crate) fn mark_used_at(&self, reference: &str, now: u64) -> Result<bool, ImageError> {
        let refs = InUse(vec![selector(reference)?]);
        let selected = |name: Option<&str>, e: &Entry| match name {
            Some(n) => refs.keeps_named(n, e),
            None => refs.keeps_dangling(e),
        };
        // A lock-free look first: usually nothing is due and nothing is written.
        let mut index = index::load(&self.paths.index)?;
        if !touch(&mut index, now, MARK_USED_INTERVAL_SECS, selected) {
            return Ok(false);
        }
        // Other marks and writers hold the index lock for milliseconds: wait that long for it
        // (pods starting together would otherwise lose their marks); a GC pass holds it for
        // longer: then give up rather than delay the container.
        let mut lock = None;
        for _ in 0..25 {
            lock = IndexLock::try_acquire(&self.paths.index_lock)?;
            if lock.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let Some(_lock) = lock else {
            log::debug!("image store busy; not recording the use of {reference}");
            return Ok(false);
        };
        let mut index = index::load(&self.paths.index)?;
        if !touch(&mut index, now, MARK_USED_INTERVAL_SECS, selected) {
            return Ok(false);
        }
        index::save(&self.paths.index, &self.paths.tmp, &index)?;
        Ok(true)
    }

    /// Removes every image name (and dangling image) no reference in `in_use` selects, with the
    /// snapshots and blobs no remaining image needs. Ignores the minimum age: it is an
    /// operator's explicit request.
    pub fn prune(&self, in_use: &HashSet<String>) -> Result<PruneReport, ImageError> {
        let in_use = InUse::new(in_use);
        let _lock = WriteLock::acquire(&self.paths.lock)?;
        let _index_lock = IndexLock::acquire(&self.paths.index_lock)?;
        let mut index = index::load(&self.paths.index)?;
        // Grouped by id and removed one id at a time, so each image is credited with the bytes
        // its own removal freed.
        let mut unused: BTreeMap<String, (Vec<String>, bool)> = BTreeMap::new();
        for (n, e) in &index.images {
            if !in_use.keeps_named(n, e) {
                unused
                    .entry(e.config.clone())
                    .or_default()
                    .0
                    .push(n.clone());
            }
        }
        for e in &index.dangling {
            if !in_use.keeps_dangling(e) {
                unused.entry(e.config.clone()).or_default().1 = true;
            }
        }
        let mut report = PruneReport::default();
        for (id, (names, dangling)) in unused {
            for n in &names {
                index.images.remove(n);
            }
            if dangling {
                index
                    .dangling
                    .retain(|e| e.config != id || in_use.keeps_dangling(e));
            }
            index::save(&self.paths.index, &self.paths.tmp, &index)?;
            let freed = self.sweep(&index)?;
            let removed = Removed {
                id,
                names,
                freed,
                usage_after: None,
            };
            log::info!("pruned image {} ({})", removed.label(), removed.id);
            report.freed += freed;
            report.removed.push(removed);
        }
        Ok(report)
    }

    /// The kubelet's image GC pass: if `usage()` is at or above `policy.high_pct`, removes
    /// images `in_use` does not keep and that are older than `policy.min_age`, least recently
    /// used first, until usage is at `policy.low_pct` or the bytes freed cover the difference
    /// (statvfs may lag behind deletions). `usage` is called before and after each removal.
    pub fn collect(
        &self,
        in_use: &HashSet<String>,
        policy: &GcPolicy,
        usage: &mut dyn FnMut() -> Result<DiskUsage, ImageError>,
    ) -> Result<GcReport, ImageError> {
        self.collect_at(in_use, policy, usage, now_secs())
    }

    pub(crate) fn collect_at(
        &self,
        in_use: &HashSet<String>,
        policy: &GcPolicy,
        usage: &mut dyn FnMut() -> Result<DiskUsage, ImageError>,
        now: u64,
    ) -> Result<GcReport, ImageError> {
        let in_use = InUse::new(in_use);
        // Held throughout: what is in use and what gets removed are decided on one index.
        let _lock = WriteLock::acquire(&self.paths.lock)?;
        let _index_lock = IndexLock::acquire(&self.paths.index_lock)?;
        let mut index = index::load(&self.paths.index)?;
        // Like the kubelet, an image in use counts as used now: when its pods go away it is
        // the last to be collected, not the first because it was started long ago.
        let refreshed = touch(&mut index, now, IN_USE_REFRESH_SECS, |name, e| match name {
            Some(n) => in_use.keeps_named(n, e),
            None => in_use.keeps_dangling(e),
        });
        if refreshed {
            index::save(&self.paths.index, &self.paths.tmp, &index)?;
        }
        let before = usage()?;
        let mut report = GcReport {
            before,
            after: before,
            triggered: false,
            removed: Vec::new(),
            freed: 0,
        };
        if policy.disabled() || before.used_pct() < u64::from(policy.high_pct) {
            return Ok(report);
        }
        report.triggered = true;
        let to_free = before.bytes_to_free(policy.low_pct);
        let min_age = policy.min_age.as_secs();
        for image in by_last_use(&index, &in_use) {
            if image.in_use {
                continue;
            }
            if image.added.saturating_add(min_age) > now {
                log::debug!(
                    "image GC: keeping {} ({}): younger than {}s",
                    image.names.join(", "),
                    image.id,
                    min_age
                );
                continue;
            }
            index.images.retain(|_, e| e.config != image.id);
            index.dangling.retain(|e| e.config != image.id);
            index::save(&self.paths.index, &self.paths.tmp, &index)?;
            let freed = self.sweep(&index)?;
            report.freed += freed;
            report.after = usage()?;
            report.removed.push(Removed {
                id: image.id,
                names: image.names,
                freed,
                usage_after: Some(report.after),
            });
            if report.freed >= to_free || report.after.used_pct() <= u64::from(policy.low_pct) {
                break;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
#[path = "gc_tests.rs"]
mod tests;

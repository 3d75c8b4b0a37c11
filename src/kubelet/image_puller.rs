//! Getting a container's image as `imagePullPolicy` says, like the kubelet's image manager:
//! Never uses the local store only, IfNotPresent pulls what is missing, Always asks the registry
//! each time a container starts. Pulls are bounded (`--serialize-image-pulls`,
//! `--max-parallel-image-pulls`) so a device's uplink and disk are not swamped at boot.

use crate::image::{Image, ImageError, ImageStore, PullOptions, PullProgress, RegistryAuth};
use std::sync::{Condvar, Mutex};

/// Why a container's image is not there, in the kubelet's waiting reasons.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageUnavailable {
    /// ErrImageNeverPull
    NeverPull(String),
    /// InvalidImageName
    InvalidName(String),
    /// ErrImagePull (then ImagePullBackOff while waiting to retry)
    PullFailed(String),
}

impl ImageUnavailable {
    pub fn reason(&self) -> &'static str {
        match self {
            ImageUnavailable::NeverPull(_) => "ErrImageNeverPull",
            ImageUnavailable::InvalidName(_) => "InvalidImageName",
            ImageUnavailable::PullFailed(_) => "ErrImagePull",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ImageUnavailable::NeverPull(m)
            | ImageUnavailable::InvalidName(m)
            | ImageUnavailable::PullFailed(m) => m,
        }
    }
}

pub struct ImagePuller {
    pub store: ImageStore,
    pub options: PullOptions,
    slots: Slots,
}

impl ImagePuller {
    pub fn new(store: ImageStore, options: PullOptions, max_parallel: usize) -> ImagePuller {
        ImagePuller {
            store,
            options,
            slots: Slots::new(max_parallel.max(1)),
        }
    }

    /// The image for a container, pulling it if its policy says so. `who` names the pod and
    /// container in log lines; `note` hears the kubelet's events (Pulling, Pulled); `secrets`
    /// gives the pod's imagePullSecrets credentials, asked for only when a pull happens.
    pub fn ensure(
        &self,
        image: &str,
        policy: &str,
        who: &str,
        note: &dyn Fn(&'static str, String),
        secrets: &dyn Fn() -> Vec<RegistryAuth>,
    ) -> Result<Image, ImageUnavailable> {
        let local = match self.store.resolve(image) {
            Ok(local) => local,
            Err(e @ ImageError::InvalidReference { .. }) => {
                return Err(ImageUnavailable::InvalidName(format!(
                    "Failed to apply default image tag {:?}: {}",
                    image, e
                )))
            }
            Err(e) => {
                return Err(ImageUnavailable::PullFailed(format!(
                    "reading the image store for {:?}: {}",
                    image, e
                )))
            }
        };
        match (policy, local) {
            ("Never", Some(img)) | ("IfNotPresent", Some(img)) => {
                note(
                    "Pulled",
                    format!("Container image {:?} already present on machine", image),
                );
                Ok(img)
            }
            ("Never", None) => Err(ImageUnavailable::NeverPull(format!(
                "Container image {:?} is not present with pull policy of Never",
                image
            ))),
            _ => {
                note("Pulling", format!("Pulling image {:?}", image));
                let started = std::time::Instant::now();
                let img = self.pull(image, who, secrets())?;
                note(
                    "Pulled",
                    format!(
                        "Successfully pulled image {:?} in {:.3?}",
                        image,
                        started.elapsed()
                    ),
                );
                Ok(img)
            }
        }
    }

    /// Records that a container starts from `image`, for image GC's least-recently-used order.
    /// Best effort: a failure only makes the image look older to GC, so it is logged, not fatal.
    pub fn mark_used(&self, image: &Image, who: &str) {
        if let Err(e) = self.store.mark_used(&image.name) {
            log::warn!("{}: recording the use of image {}: {}", who, image.name, e);
        }
    }

    fn pull(
        &self,
        image: &str,
        who: &str,
        secrets: Vec<RegistryAuth>,
    ) -> Result<Image, ImageUnavailable> {
        let _slot = self.slots.acquire();
        log::info!("{}: pulling image {:?}", who, image);
        let started = std::time::Instant::now();
        let mut last_layer = usize::MAX;
        let mut progress = |p: PullProgress| {
            if p.layer != last_layer && p.bytes >= p.total {
                last_layer = p.layer;
                log::info!(
                    "{}: pulling image {:?}: layer {}/{} done ({:.1} MiB)",
                    who,
                    image,
                    p.layer,
                    p.layers,
                    p.total as f64 / 1048576.0
                );
            }
        };
        let with_secrets;
        let options = if secrets.is_empty() {
            &self.options
        } else {
            // The pod's credentials first, then the node's.
            let mut o = self.options.clone();
            o.auths.splice(0..0, secrets);
            with_secrets = o;
            &with_secrets
        };
        match self.store.pull(image, options, &mut progress) {
            Ok(img) => {
                log::info!(
                    "{}: pulled image {:?} ({}) in {:.1?}",
                    who,
                    image,
                    img.repo_digest,
                    started.elapsed()
                );
                Ok(img)
            }
            Err(e @ ImageError::InvalidReference { .. }) => Err(ImageUnavailable::InvalidName(
                format!("Failed to apply default image tag {:?}: {}", image, e),
            )),
            Err(e) => Err(ImageUnavailable::PullFailed(format!(
                "failed to pull and unpack image {:?}: {}",
                image, e
            ))),
        }
    }
}

/// A counting semaphore: at most `n` pulls at once.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self) -> Slot<'_> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(|p| p.into_inner());
        *free += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn slots_bound_concurrency() {
        let slots = Arc::new(Slots::new(2));
        let (inside, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (slots, inside, peak) = (slots.clone(), inside.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _s = slots.acquire();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn never_and_if_not_present_use_the_local_store_only() {
        let root = std::env::temp_dir().join(format!("tinylet-puller-{}", std::process::id()));
        let puller = ImagePuller::new(ImageStore::open(&root).unwrap(), PullOptions::default(), 1);
        let e = puller
            .ensure("127.0.0.1:1/none:1", "Never", "test", &|_, _| {}, &Vec::new)
            .unwrap_err();
        assert_eq!(e.reason(), "ErrImageNeverPull");
        assert!(e.message().contains("pull policy of Never"), "{:?}", e);
        let e = puller
            .ensure("Bad Name", "IfNotPresent", "test", &|_, _| {}, &Vec::new)
            .unwrap_err();
        assert_eq!(e.reason(), "InvalidImageName");
        // Nothing listens on 127.0.0.1:1: the pull fails at once, as ErrImagePull.
        let e = puller
            .ensure(
                "127.0.0.1:1/none:1",
                "IfNotPresent",
                "test",
                &|_, _| {},
                &Vec::new,
            )
            .unwrap_err();
        assert_eq!(e.reason(), "ErrImagePull");
        assert!(e.message().contains("127.0.0.1:1"), "{:?}", e);
        std::fs::remove_dir_all(&root).ok();
    }
}

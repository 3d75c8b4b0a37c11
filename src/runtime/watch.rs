//! Wakes pod workers when a container's monitor writes a record (started.json, exit.json), so a
//! worker can sleep while its containers run instead of polling: one inotify instance and one
//! thread for the whole agent, one watch per container bundle.

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

type Notify = Box<dyn Fn() + Send>;

pub struct BundleWatcher {
    inotify: Inotify,
    watches: Mutex<HashMap<WatchDescriptor, Notify>>,
}

impl BundleWatcher {
    /// Starts the watcher thread. Fails only if inotify itself is unavailable.
    pub fn start() -> std::io::Result<Arc<BundleWatcher>> {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(std::io::Error::from)?;
        let w = Arc::new(BundleWatcher {
            inotify,
            watches: Mutex::new(HashMap::new()),
        });
        let w2 = w.clone();
        std::thread::Builder::new()
            .name("bundle-watch".into())
            .stack_size(128 * 1024)
            .spawn(move || w2.run())?;
        Ok(w)
    }

    /// Calls `notify` whenever a file is renamed into `bundle` (the monitor's atomic writes).
    /// The watch ends by itself when the bundle directory is removed.
    pub fn watch(&self, bundle: &Path, notify: Notify) -> std::io::Result<()> {
        let wd = self
            .inotify
            .add_watch(
                bundle,
                AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR,
            )
            .map_err(std::io::Error::from)?;
        if let Ok(mut m) = self.watches.lock() {
            m.insert(wd, notify);
        }
        Ok(())
    }

    fn run(&self) {
        loop {
            let events = match self.inotify.read_events() {
                Ok(e) => e,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::error!(
                        "bundle watcher stopped: {}; workers fall back to polling",
                        e
                    );
                    return;
                }
            };
            let Ok(mut m) = self.watches.lock() else {
                return;
            };
            for e in events {
                if e.mask.contains(AddWatchFlags::IN_IGNORED) {
                    m.remove(&e.wd);
                } else if let Some(notify) = m.get(&e.wd) {
                    notify();
                }
            }
        }
    }
}

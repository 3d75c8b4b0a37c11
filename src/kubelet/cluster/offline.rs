//! Running cut off from the control plane. Pods bound to the node keep running from the local
//! cache (their records on disk) for as long as the API server is out of reach — unless
//! `--offline-max-age` is set and the last contact is older than that, in which case they are
//! stopped until the API server confirms them again. The time of the last contact is kept on
//! disk (at most once a minute, to spare flash) so that a reboot does not reset the clock.

use crate::fsutil;
use crate::kube::client::ApiClient;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const CONTACT_FILE: &str = "api-last-contact";
const PERSIST_EVERY: Duration = Duration::from_secs(60);

fn contact_file(root: &Path) -> PathBuf {
    root.join(CONTACT_FILE)
}

/// The last contact an earlier run recorded (0 if none).
pub fn load_last_contact(root: &Path) -> u64 {
    std::fs::read_to_string(contact_file(root))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Persists the client's last contact whenever it moved, checking once a minute.
pub fn start_persisting(client: Arc<ApiClient>, root: PathBuf) -> Result<(), String> {
    super::spawn("api-contact", move || {
        let mut written = load_last_contact(&root);
        loop {
            std::thread::sleep(PERSIST_EVERY);
            let last = client.last_contact();
            if last > written {
                match fsutil::write_volatile(
                    &contact_file(&root),
                    last.to_string().as_bytes(),
                    0o644,
                ) {
                    Ok(()) => written = last,
                    Err(e) => log::warn!("recording the last API contact: {}", e),
                }
            }
        }
    })
}

/// Whether the node has been cut off for longer than `max_age` (never when no contact is known).
pub fn too_long(client: &ApiClient, max_age: Option<Duration>) -> Option<Duration> {
    let max_age = max_age?;
    let last = client.last_contact();
    if last == 0 {
        return None;
    }
    let away = Duration::from_secs(crate::clock::now_unix().as_secs().saturating_sub(last));
    (away > max_age).then_some(away)
}

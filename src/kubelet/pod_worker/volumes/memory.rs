//! Projection volumes on tmpfs (secret, projected, downwardAPI), and the copy of their payload
//! kept on disk so that a reboot while the API server is out of reach can fill them again.

use super::atomic_writer::{self, File};
use super::{in_memory, relative_path, tmpfs, PodWorker};
use crate::base64::{base64_decode, base64_encode};
use crate::fsutil;
use crate::kube::types::Volume;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

impl PodWorker {
    /// A tmpfs on a projection's directory; files an older tinylet wrote on disk there go first.
    pub(super) fn mount_memory(&self, dir: &Path) -> Result<(), String> {
        if !crate::runtime::sandbox::is_mountpoint(dir) {
            fsutil::remove_dir_all_if_exists(dir).map_err(|e| e.to_string())?;
            fsutil::ensure_dir(dir).map_err(|e| e.to_string())?;
        }
        tmpfs::ensure(dir, None).map_err(|e| e.to_string())
    }

    fn payload_cache(&self, vol: &Volume) -> PathBuf {
        self.volumes_dir().join(format!(".{}.payload", vol.name))
    }

    /// Keeps the payload of a tmpfs volume on disk for an offline restart (written only when
    /// it changed: one fsync per change, not per resync).
    pub(super) fn save_payload(&self, vol: &Volume, files: &[File]) -> Result<(), String> {
        let doc = json!({
            "version": 1,
            "files": files.iter().map(|f| json!({
                "path": f.path, "mode": f.mode, "data": base64_encode(&f.data)
            })).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
        let path = self.payload_cache(vol);
        if std::fs::read(&path).is_ok_and(|old| old == bytes) {
            return Ok(());
        }
        fsutil::write_atomic(&path, &bytes, 0o600).map_err(|e| format!("{}: {}", path.display(), e))
    }

    fn load_payload(&self, vol: &Volume) -> Option<Vec<File>> {
        let path = self.payload_cache(vol);
        let doc: Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
        if doc["version"] != 1 {
            return None;
        }
        let mut out = Vec::new();
        for f in doc["files"].as_array()? {
            out.push(File {
                path: f["path"].as_str()?.to_string(),
                mode: u32::try_from(f["mode"].as_u64()?).ok()?,
                data: base64_decode(f["data"].as_str()?)?,
            });
        }
        Some(out)
    }

    /// The volume as made the last time, when its sources cannot be read now. A tmpfs volume
    /// is filled again from its payload on disk (after a reboot the tmpfs is empty); one made
    /// by an older tinylet directly on disk is used as it is.
    pub(super) fn restore(&self, vol: &Volume) -> Result<PathBuf, String> {
        let dir = self.volumes_dir().join(relative_path(&vol.name)?);
        if !in_memory(&vol.source) {
            return Ok(dir);
        }
        if let Some(files) = self.load_payload(vol) {
            self.mount_memory(&dir)?;
            atomic_writer::write(&dir, &files, self.fs_group()).map_err(|e| e.to_string())?;
        }
        Ok(dir)
    }
}

//! Containers: OCI bundles from pod specs, run by runc under a per-container monitor, inside a
//! pod sandbox (shared namespaces) and a pod cgroup. Nothing here knows about pod lifecycles;
//! `kubelet` decides what to run and when.

pub mod cgroups;
pub mod log_file;
pub mod logs;
pub mod rootfs;
pub mod runc;
pub mod sandbox;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod watch;

use crate::fsutil;
use cgroups::Hierarchy;
use runc::Runc;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where a container is in its life, as the monitor's records say.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    /// The monitor is running runc.
    Starting,
    Running(shim::Started),
    Exited(shim::Exited),
    /// No monitor and no exit record (killed monitor, or the host rebooted).
    Lost,
}

/// The container runtime: paths, the runc binary and the cgroup hierarchy.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub runc: Runc,
    pub root_dir: PathBuf,
    pub cgroups: Hierarchy,
    /// `--cgroup-root`: pods live under `<cgroup-root>/kubepods`.
    pub cgroup_root: String,
    /// This binary, started in `shim` mode as each container's monitor.
    pub self_exe: PathBuf,
    /// `--container-log-max-size` / `--container-log-max-files`, applied by each monitor.
    pub log_rotation: log_file::Rotation,
    /// The QoS-level cgroups were made by this agent (`Hierarchy::create_pod`).
    pub qos_cgroups_ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A container's rootfs being made (`Runtime::begin_rootfs`).
pub enum PendingRootfs {
    Thread(std::thread::JoinHandle<Result<(), String>>),
    Done(Result<(), String>),
}

impl PendingRootfs {
    fn wait(self) -> Result<(), String> {
        match self {
            PendingRootfs::Thread(t) => t
                .join()
                .unwrap_or_else(|_| Err("the rootfs thread panicked".into())),
            PendingRootfs::Done(r) => r,
        }
    }
}

/// What a new container needs beyond its OCI spec.
pub struct StartRequest<'a> {
    pub pod_uid: &'a str,
    /// The pod's QoS class: where its cgroup is (`cgroups::pod_cgroup_path`).
    pub qos_class: &'a str,
    pub spec: &'a serde_json::Value,
    pub log_path: &'a Path,
}

impl Runtime {
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.root_dir.join("pods").join(uid)
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.root_dir.join("containers").join(id)
    }

    pub fn pod_cgroup(&self, qos_class: &str, uid: &str) -> String {
        cgroups::pod_cgroup_path(&self.cgroup_root, qos_class, uid)
    }

    pub fn container_cgroup(&self, qos_class: &str, uid: &str, id: &str) -> String {
        format!("{}/{}", self.pod_cgroup(qos_class, uid), id)
    }

    /// Starts making the bundle's directories and its rootfs (an overlay over the image
    /// snapshot) on a thread of its own: half a dozen directory and mount operations that
    /// overlap the building of the container's spec. `prepare` or `abandon` completes it.
    pub fn begin_rootfs(&self, id: &str, snapshot: &Path) -> PendingRootfs {
        let (bundle, snapshot) = (self.bundle(id), snapshot.to_path_buf());
        let make = move || {
            fsutil::ensure_dir(&bundle).map_err(|e| e.to_string())?;
            rootfs::prepare(&snapshot, &bundle).map_err(|e| format!("preparing rootfs: {}", e))
        };
        // Without a thread (none to be had), the same work in line.
        let spawned = std::thread::Builder::new()
            .name("rootfs".into())
            .stack_size(64 * 1024)
            .spawn(make.clone());
        match spawned {
            Ok(t) => PendingRootfs::Thread(t),
            Err(_) => PendingRootfs::Done(make()),
        }
    }

    /// Completes the bundle: waits for the rootfs and writes config.json. On failure the
    /// bundle is removed.
    pub fn prepare(
        &self,
        id: &str,
        req: &StartRequest,
        rootfs: PendingRootfs,
    ) -> Result<(), String> {
        let bundle = self.bundle(id);
        let result = rootfs.wait().and_then(|()| {
            let mut spec = req.spec.clone();
            spec["root"]["path"] = serde_json::json!(bundle.join("rootfs"));
            spec["linux"]["cgroupsPath"] =
                serde_json::json!(self.container_cgroup(req.qos_class, req.pod_uid, id));
            // Root only: the spec holds the container's environment, Secret values included.
            let data = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
            fsutil::write_volatile(&bundle.join("config.json"), &data, 0o600)
                .map_err(|e| format!("writing config.json: {}", e))
        });
        if result.is_err() {
            let _ = self.remove(id);
        }
        result
    }

    /// A bundle `begin_rootfs` started that will not be used: waits for it and removes it.
    pub fn abandon(&self, id: &str, rootfs: PendingRootfs) {
        let _ = rootfs.wait();
        let _ = self.remove(id);
    }

    /// Starts the container's monitor, which runs runc on the prepared bundle. Returns once the
    /// monitor is detached; `observe` tells when the container runs.
    pub fn launch(&self, id: &str, req: &StartRequest) -> Result<(), String> {
        let args = shim::ShimArgs {
            id: id.to_string(),
            bundle: self.bundle(id),
            runc: self.runc.clone(),
            log_path: req.log_path.to_path_buf(),
            cgroup: self.container_cgroup(req.qos_class, req.pod_uid, id),
            log_rotation: self.log_rotation,
        };
        let result = Command::new(&self.self_exe)
            .args(args.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("starting monitor {}: {}", self.self_exe.display(), e))
            .and_then(|status| match status.success() {
                true => Ok(()),
                false => Err(format!("container monitor failed to start: {}", status)),
            });
        if result.is_err() {
            let _ = self.remove(id);
        }
        result
    }

    pub fn observe(&self, id: &str) -> Observed {
        let bundle = self.bundle(id);
        if let Some(e) = shim::read_exited(&bundle) {
            return Observed::Exited(e);
        }
        if shim::is_alive(&bundle) {
            return match shim::read_started(&bundle) {
                Some(s) => Observed::Running(s),
                None => Observed::Starting,
            };
        }
        // The monitor may have written its record and exited between the two checks.
        match shim::read_exited(&bundle) {
            Some(e) => Observed::Exited(e),
            None => Observed::Lost,
        }
    }

    /// Runs a command in the container (exec probes); see `Runc::exec`.
    pub fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: std::time::Duration,
    ) -> Result<(Option<i32>, String), String> {
        self.runc.exec(id, argv, timeout)
    }

    /// Sends a signal (by name, e.g. "TERM") to the container's init.
    pub fn signal(&self, id: &str, signal: &str) -> Result<(), String> {
        self.runc.kill(id, signal)
    }

    /// Deletes runc's state, unmounts the rootfs and removes the bundle. Idempotent.
    pub fn remove(&self, id: &str) -> Result<(), String> {
        let bundle = self.bundle(id);
        let cgroup = fsutil::read_json::<serde_json::Value>(&bundle.join("config.json"))
            .ok()
            .flatten()
            .and_then(|spec| spec["linux"]["cgroupsPath"].as_str().map(str::to_string));
        if let Some(cgroup) = cgroup
            .filter(|_| !matches!(self.observe(id), Observed::Running(_) | Observed::Starting))
        {
            self.cgroups.reclaim(&cgroup);
        }
        if self.runc.exists(id) {
            self.runc.delete(id)?;
        }
        rootfs::release(&bundle).map_err(|e| e.to_string())?;
        fsutil::remove_dir_all_if_exists(&bundle).map_err(|e| e.to_string())
    }

    /// Ids of every container bundle on disk (for garbage collection of orphans).
    pub fn list_bundles(&self) -> Vec<String> {
        std::fs::read_dir(self.root_dir.join("containers"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }
}

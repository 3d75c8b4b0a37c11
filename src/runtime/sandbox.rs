//! The pod sandbox: the network, IPC and UTS namespaces all containers of a pod share, made by
//! tinylet itself (no pause container). A short-lived thread unshares them, brings up loopback,
//! sets the hostname, and bind-mounts its `/proc/<tid>/ns/*` files under the pod directory so the
//! namespaces outlive the thread; runc then joins them by path. A tmpfs for /dev/shm is shared too.
//!
//! A shared PID namespace (`shareProcessNamespace`) cannot be pinned that way: it dies with its
//! first process. The thread forks a minimal init into it (`pause`: reaps orphans, nothing
//! else), which lives until the pod is removed; its pid is kept in `ns/pause.pid`.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SandboxOptions {
    pub host_network: bool,
    pub host_ipc: bool,
    /// shareProcessNamespace: one PID namespace for all containers of the pod.
    pub share_pid: bool,
}

/// Paths of a pod's namespaces; `None` means the host's.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    pub shm: PathBuf,
    /// The pod's shared PID namespace, if it has one.
    pub pid: Option<PathBuf>,
}

fn ns_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("ns")
}

/// A sandbox whose namespaces are being made on a thread of their own: the caller prepares the
/// containers' bundles meanwhile (the paths are known in advance) and calls `wait` before any
/// container is started in it.
pub struct PendingSandbox {
    sandbox: Sandbox,
    namespaces: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl PendingSandbox {
    /// The sandbox's paths; valid for building specs before `wait`.
    pub fn paths(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The namespaces are being made anew (not an existing sandbox adopted).
    pub fn is_new(&self) -> bool {
        self.namespaces.is_some()
    }

    /// Blocks until the namespaces are pinned; the sandbox is usable once this returns Ok.
    pub fn wait(self) -> io::Result<Sandbox> {
        if let Some(t) = self.namespaces {
            t.join()
                .map_err(|_| io::Error::other("namespace thread panicked"))??;
        }
        Ok(self.sandbox)
    }
}

/// Starts making the sandbox, or returns the existing one when its namespaces are still mounted
/// (an agent restart adopts the pod). Everything a new sandbox needs on disk (the pins, the shm
/// tmpfs) is made on the namespace thread too, so that the caller goes on at once.
pub fn begin(pod_dir: &Path, hostname: &str, opts: SandboxOptions) -> io::Result<PendingSandbox> {
    let dir = ns_dir(pod_dir);
    let mut kinds: Vec<(&str, CloneFlags)> = Vec::new();
    if !opts.host_network {
        kinds.push(("net", CloneFlags::CLONE_NEWNET));
        kinds.push(("uts", CloneFlags::CLONE_NEWUTS));
    }
    if !opts.host_ipc {
        kinds.push(("ipc", CloneFlags::CLONE_NEWIPC));
    }
    if opts.share_pid {
        kinds.push(("pid", CloneFlags::CLONE_NEWPID));
    }
    let shm = pod_dir.join("shm");
    let path = |k: &str| kinds.iter().any(|(n, _)| *n == k).then(|| dir.join(k));
    let sandbox = Sandbox {
        net: path("net"),
        ipc: path("ipc"),
        uts: path("uts"),
        shm: shm.clone(),
        pid: path("pid"),
    };
    if kinds.iter().all(|(k, _)| is_nsfs(&dir.join(k))) && (!opts.share_pid || pause_alive(&dir)) {
        mount_shm(&shm)?;
        return Ok(PendingSandbox {
            sandbox,
            namespaces: None,
        });
    }
    let flags = kinds
        .iter()
        .fold(CloneFlags::empty(), |acc, (_, f)| acc | *f);
    let names: Vec<String> = kinds.iter().map(|(k, _)| k.to_string()).collect();
    let (dir2, host) = (dir.clone(), hostname.to_string());
    let net = !opts.host_network;
    let thread = std::thread::Builder::new()
        .name("sandbox".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            fs::create_dir_all(&dir2).map_err(|e| ctx(e, "creating", &dir2))?;
            mount_shm(&shm)?;
            // A partial sandbox (crash mid-create, or a reboot) is rebuilt from scratch.
            kill_pause(&dir2);
            unmount_namespaces(&dir2);
            for k in &names {
                let f = dir2.join(k);
                fs::write(&f, b"").map_err(|e| ctx(e, "creating", &f))?;
            }
            unshare_and_pin(flags, &names, &dir2, &host, net)
        })
        .map_err(|e| ctx(e, "spawning namespace thread for", &dir))?;
    Ok(PendingSandbox {
        sandbox,
        namespaces: Some(thread),
    })
}

/// The pod's /dev/shm: a tmpfs of the runtime's default size, mounted once.
fn mount_shm(shm: &Path) -> io::Result<()> {
    if is_mountpoint(shm) {
        return Ok(());
    }
    fs::create_dir_all(shm).map_err(|e| ctx(e, "creating", shm))?;
    mount(
        Some("shm"),
        shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(|e| ctx(e.into(), "mounting shm tmpfs on", shm))
}

/// Runs on a thread of its own: unshare affects only the calling thread, which then exits, so the
/// agent's other threads never see the new namespaces.
fn unshare_and_pin(
    flags: CloneFlags,
    names: &[String],
    dir: &Path,
    hostname: &str,
    net: bool,
) -> io::Result<()> {
    unshare(flags).map_err(|e| io::Error::other(format!("unshare({:?}): {}", flags, e)))?;
    if flags.contains(CloneFlags::CLONE_NEWUTS) {
        nix::unistd::sethostname(hostname)
            .map_err(|e| io::Error::other(format!("sethostname {:?}: {}", hostname, e)))?;
    }
    if net {
        loopback_up().map_err(|e| io::Error::other(format!("bringing up lo: {}", e)))?;
    }
    let tid = nix::unistd::gettid();
    if flags.contains(CloneFlags::CLONE_NEWPID) {
        start_pause(dir)?;
    }
    for name in names {
        // unshare(CLONE_NEWPID) moves only this thread's future children.
        let file = if name == "pid" {
            "pid_for_children"
        } else {
            name
        };
        let src = PathBuf::from(format!("/proc/self/task/{}/ns/{}", tid, file));
        let dst = dir.join(name);
        mount(
            Some(&src),
            &dst,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| {
            ctx(
                e.into(),
                &format!("bind-mounting {} on", src.display()),
                &dst,
            )
        })?;
    }
    Ok(())
}

/// `ip link set lo up`, by ioctl on a socket in the current network namespace.
fn loopback_up() -> io::Result<()> {
    use nix::libc;
    // SAFETY: plain socket(2) call; the fd is owned by `sock` and closed on drop.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we exclusively own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, a valid ifreq owned by this frame.
    unsafe {
        if libc::ioctl(raw, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(raw, libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Unmounts and removes everything `ensure` made. Safe to call on a half-made or absent sandbox.
pub fn remove(pod_dir: &Path) -> io::Result<()> {
    let dir = ns_dir(pod_dir);
    kill_pause(&dir);
    unmount_namespaces(&dir);
    let shm = pod_dir.join("shm");
    if is_mountpoint(&shm) {
        umount2(&shm, MntFlags::MNT_DETACH).map_err(|e| ctx(e.into(), "unmounting", &shm))?;
    }
    for p in [&dir, &shm] {
        match fs::remove_dir_all(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(ctx(e, "removing", p)),
            _ => {}
        }
    }
    Ok(())
}

fn unmount_namespaces(dir: &Path) {
    for k in ["net", "ipc", "uts", "pid"] {
        let f = dir.join(k);
        while is_nsfs(&f) {
            if umount2(&f, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
}

/// Forks the shared PID namespace's init: the first child of this thread after
/// unshare(CLONE_NEWPID) is pid 1 there. Its pid is written to `pause.pid`.
fn start_pause(dir: &Path) -> io::Result<()> {
    use nix::libc;
    // SAFETY: fork(2) from a multi-threaded process: the child only makes async-signal-safe
    // system calls (no allocation, no locks) in `pause_main`, which never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::other(format!(
            "forking the pod's pid 1: {}",
            io::Error::last_os_error()
        )));
    }
    if pid == 0 {
        pause_main();
    }
    let file = dir.join(PAUSE_PID);
    fs::write(&file, pid.to_string()).map_err(|e| ctx(e, "writing", &file))
}

const PAUSE_PID: &str = "pause.pid";

/// The shared PID namespace's init: detached from the agent (own session, no inherited file
/// descriptors, so no lock or socket of the agent outlives it), reaping the orphans the kernel
/// hands it. SIGKILL from the agent ends it, and with it every process left in the namespace.
fn pause_main() -> ! {
    use nix::libc;
    // SAFETY: only async-signal-safe calls on this frame's own memory; see start_pause.
    unsafe {
        libc::setsid();
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
            for fd in 0..4096 {
                libc::close(fd);
            }
        }
        let name = b"pause\0";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        let mut chld: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut chld);
        libc::sigaddset(&mut chld, libc::SIGCHLD);
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            libc::sigwaitinfo(&chld, std::ptr::null_mut());
        }
    }
}

/// The pause process recorded for `dir` still runs, in the namespace pinned there.
fn pause_alive(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(pid) = read_pause_pid(dir) else {
        return false;
    };
    match (
        fs::metadata(format!("/proc/{}/ns/pid", pid)),
        fs::metadata(dir.join("pid")),
    ) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

fn read_pause_pid(dir: &Path) -> Option<i32> {
    fs::read_to_string(dir.join(PAUSE_PID))
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
}

/// SIGKILL to the pod's pause process (if it is still the one in the pinned namespace), and
/// reaped when this agent is its parent.
fn kill_pause(dir: &Path) {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;
    if pause_alive(dir) {
        if let Some(pid) = read_pause_pid(dir).map(Pid::from_raw) {
            let _ = kill(pid, Signal::SIGKILL);
            for _ in 0..100 {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    _ => break, // reaped, or not our child (an adopted pod)
                }
            }
        }
    }
    let _ = fs::remove_file(dir.join(PAUSE_PID));
}

/// An nsfs bind mount: the file's filesystem magic is NSFS_MAGIC.
// f_type's integer type differs between targets (i64 on x86_64, u32/u64 elsewhere).
#[allow(clippy::unnecessary_cast)]
pub fn is_nsfs(p: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type().0 as i64 == NSFS_MAGIC)
        .unwrap_or(false)
}

/// A directory is a mount point when its device differs from its parent's.
pub fn is_mountpoint(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(parent)) = (fs::metadata(p), p.parent()) else {
        return false;
    };
    fs::metadata(parent)
        .map(|pm| pm.dev() != me.dev())
        .unwrap_or(false)
}

fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{} {}: {}", what, path.display(), e))
}

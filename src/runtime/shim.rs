//! The per-container monitor: `tinylet shim`, a tiny detached process per container (like conmon).
//! It starts the container with `runc run --detach`, owns its stdout/stderr pipes and writes them
//! to the CRI log file, becomes the container's parent (child subreaper) to collect its exit
//! status, and records that status in the bundle. Containers and logs therefore outlive tinylet.
//!
//! Files it writes in the bundle: `shim.pid`, `started.json`, `exit.json` (the last thing it does).

use super::cgroups::Hierarchy;
use super::logs::{LineSplitter, Stream};
use super::runc::{self, Runc};
use crate::{clock, fsutil};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Started {
    pub pid: i32,
    pub started_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Exited {
    pub exit_code: i32,
    #[serde(default)]
    pub signal: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
    pub finished_at: String,
    /// Set when runc could not start the container at all.
    #[serde(default)]
    pub start_error: Option<String>,
}

// The monitor writes its two records by hand rather than through serde_json: it keeps the
// serializer's code out of the monitor's resident pages (its RSS is per container).
impl Started {
    fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let json = format!(
            "{{\"pid\":{},\"startedAt\":\"{}\"}}",
            self.pid, self.started_at
        );
        fsutil::write_volatile(&bundle.join("started.json"), json.as_bytes(), 0o644)
    }
}

impl Exited {
    fn write(&self, bundle: &Path) -> std::io::Result<()> {
        let opt_num = |v: Option<i32>| v.map(|n| n.to_string()).unwrap_or_else(|| "null".into());
        let json = format!(
            "{{\"exitCode\":{},\"signal\":{},\"oomKilled\":{},\"finishedAt\":\"{}\",\"startError\":{}}}",
            self.exit_code,
            opt_num(self.signal),
            self.oom_killed,
            self.finished_at,
            self.start_error.as_deref().map(json_string).unwrap_or_else(|| "null".into())
        );
        let path = bundle.join("exit.json");
        crate::ballast::write_or_spend(&path.display(), || {
            fsutil::write_volatile(&path, json.as_bytes(), 0o644)
        })
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What the monitor needs, passed on its command line by the agent.
#[derive(Debug, Clone)]
pub struct ShimArgs {
    pub id: String,
    pub bundle: PathBuf,
    pub runc: Runc,
    pub log_path: PathBuf,
    pub cgroup: String,
    pub log_rotation: super::log_file::Rotation,
}

impl ShimArgs {
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "shim".into(),
            self.id.clone(),
            self.bundle.display().to_string(),
            self.runc.binary.display().to_string(),
            self.runc.root.display().to_string(),
            self.log_path.display().to_string(),
            self.cgroup.clone(),
            self.log_rotation.max_size.to_string(),
            self.log_rotation.max_files.to_string(),
        ]
    }

    pub fn parse(args: &[String]) -> Result<ShimArgs, String> {
        match args {
            [id, bundle, binary, root, log, cgroup, max_size, max_files] => Ok(ShimArgs {
                id: id.clone(),
                bundle: bundle.into(),
                runc: Runc { binary: binary.into(), root: root.into() },
                log_path: log.into(),
                cgroup: cgroup.clone(),
                log_rotation: super::log_file::Rotation {
                    max_size: max_size.parse().map_err(|_| format!("shim: bad log size {:?}", max_size))?,
                    max_files: max_files.parse().map_err(|_| format!("shim: bad log file count {:?}", max_files))?,
                },
            }),
            _ => Err("usage: tinylet shim ID BUNDLE RUNC RUNC_ROOT LOG_PATH CGROUP LOG_MAX_SIZE LOG_MAX_FILES (started by tinylet run, not by hand)".into()),
        }
    }
}

/// Entry point of `tinylet shim`. Forks so the agent's spawn returns at once and the monitor is
/// re-parented to init; the child never returns.
pub fn main(args: ShimArgs) -> i32 {
    // SAFETY: the monitor is single-threaded at this point (it has just been exec'd).
    match unsafe { nix::unistd::fork() } {
        // The parent records the monitor's pid before the agent's spawn returns: were it left to
        // the child, an agent looking at once would find neither a monitor nor an exit record
        // and report the new container lost.
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let pid_file = args.bundle.join("shim.pid");
            return match fsutil::write_volatile(&pid_file, child.to_string().as_bytes(), 0o644) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("tinylet shim: writing {}: {}", pid_file.display(), e);
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    1
                }
            };
        }
        Ok(nix::unistd::ForkResult::Child) => {}
        Err(e) => {
            eprintln!("tinylet shim: fork: {}", e);
            return 1;
        }
    }
    let _ = nix::unistd::setsid();
    // The exit record must not be lost to a full disk: the agent's ballast is spent for it.
    if let Some(ballast) = crate::ballast::path_for_bundle(&args.bundle) {
        crate::ballast::use_existing(ballast);
    }
    let code = match monitor(&args) {
        Ok(()) => 0,
        Err(e) => {
            // Nobody reads our stderr: leave the reason where the agent looks.
            let exited = Exited {
                exit_code: 128,
                signal: None,
                oom_killed: false,
                finished_at: now(),
                start_error: Some(format!("container monitor: {}", e)),
            };
            let _ = exited.write(&args.bundle);
            1
        }
    };
    std::process::exit(code);
}

fn now() -> String {
    clock::rfc3339(clock::now_unix())
}

fn monitor(a: &ShimArgs) -> Result<(), String> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("prctl(PR_SET_CHILD_SUBREAPER): {}", e))?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block()
        .map_err(|e| format!("blocking SIGCHLD: {}", e))?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {}", e))?;

    if let Some(dir) = a.log_path.parent() {
        fsutil::ensure_dir(dir).map_err(|e| e.to_string())?;
    }
    let mut log = super::log_file::LogFile::open(&a.log_path, a.log_rotation)
        .map_err(|e| format!("opening log {}: {}", a.log_path.display(), e))?;
    let (out_r, out_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {}", e))?;
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {}", e))?;

    // std resets the signal mask in the child, so runc and the container start with SIGCHLD unblocked.
    let runc_pid = a
        .runc
        .run_detached(&a.id, &a.bundle)
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .spawn()
        .map_err(|e| format!("running {}: {}", a.runc.binary.display(), e))?
        .id() as i32;
    let mut pipes = Pipes {
        fds: [out_r, err_r],
        splitters: [
            LineSplitter::new(Stream::Stdout),
            LineSplitter::new(Stream::Stderr),
        ],
        eof: [false; 2],
    };

    // Output is copied from the first byte on, while runc is still finishing: a container's first
    // lines reach the log as soon as it writes them. `reaped` holds exit statuses collected before
    // we know which pid they belong to (the container's init can exit, and be re-parented to us,
    // before runc's pid file is read).
    let mut reaped: HashMap<i32, WaitStatus> = HashMap::new();
    let mut container_pid: Option<i32> = None;
    let exit = loop {
        reap_into(&mut reaped);
        if container_pid.is_none() {
            if let Some(status) = reaped.remove(&runc_pid) {
                if !matches!(status, WaitStatus::Exited(_, 0)) {
                    let msg = runc::last_error(&a.bundle)
                        .unwrap_or_else(|| format!("runc run ended with {:?}", status));
                    // Whatever runc printed is in the pipes: keep it in the log, then record the failure.
                    pipes.pump(&mut log, None, 200);
                    pipes.finish(&mut log);
                    let exited = Exited {
                        exit_code: 128,
                        signal: None,
                        oom_killed: false,
                        finished_at: now(),
                        start_error: Some(msg),
                    };
                    return exited.write(&a.bundle).map_err(|e| e.to_string());
                }
                let pid: i32 = std::fs::read_to_string(a.bundle.join("pid"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or("runc run succeeded but wrote no pid file")?;
                let started = Started {
                    pid,
                    started_at: now(),
                };
                started.write(&a.bundle).map_err(|e| e.to_string())?;
                container_pid = Some(pid);
            }
        }
        if let Some(status) = container_pid.and_then(|pid| reaped.remove(&pid)) {
            break status;
        }
        if container_pid.is_some() {
            // Orphans re-parented to us (hostPID pods) need reaping, not remembering.
            reaped.clear();
        }
        if pipes.pump(&mut log, Some(&sigfd), 0) {
            while let Ok(Some(_)) = sigfd.read_signal() {}
        }
    };
    // The pid namespace is gone with its init; drain what is left in the pipes (bounded wait).
    pipes.pump(&mut log, None, 2000);
    pipes.finish(&mut log);

    let (exit_code, signal) = match exit {
        WaitStatus::Exited(_, code) => (code, None),
        WaitStatus::Signaled(_, sig, _) => (128 + sig as i32, Some(sig as i32)),
        _ => (255, None),
    };
    let oom_killed = Hierarchy::detect().oom_kills(&a.cgroup) > 0;
    let exited = Exited {
        exit_code,
        signal,
        oom_killed,
        finished_at: now(),
        start_error: None,
    };
    exited.write(&a.bundle).map_err(|e| e.to_string())
}

/// Reaps every exited child (we are the subreaper of the container's processes) into `reaped`.
fn reap_into(reaped: &mut HashMap<i32, WaitStatus>) {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(s) => {
                if let Some(pid) = s.pid() {
                    reaped.insert(pid.as_raw(), s);
                }
            }
        }
    }
}

/// The container's stdout and stderr pipes, each with its line splitter.
struct Pipes {
    fds: [OwnedFd; 2],
    splitters: [LineSplitter; 2],
    eof: [bool; 2],
}

impl Pipes {
    /// Polls the pipes (and the signalfd, if given), copying available output to the log.
    /// With a signalfd: returns true as soon as it is readable (false once both pipes hit EOF).
    /// Without: keeps going until both pipes reach EOF or `timeout_ms` has passed.
    fn pump(
        &mut self,
        log: &mut super::log_file::LogFile,
        sigfd: Option<&SignalFd>,
        timeout_ms: u64,
    ) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
        let mut buf = [0u8; 32 * 1024];
        loop {
            let open: Vec<usize> = (0..2).filter(|i| !self.eof[*i]).collect();
            if open.is_empty() && sigfd.is_none() {
                return false;
            }
            let mut fds: Vec<PollFd> = open
                .iter()
                .map(|i| PollFd::new(self.fds[*i].as_fd(), PollFlags::POLLIN))
                .collect();
            if let Some(s) = sigfd {
                fds.push(PollFd::new(s.as_fd(), PollFlags::POLLIN));
            }
            let timeout = if sigfd.is_some() {
                PollTimeout::NONE
            } else {
                let left = deadline
                    .saturating_duration_since(std::time::Instant::now())
                    .as_millis();
                if left == 0 {
                    return false;
                }
                PollTimeout::try_from(left.min(60_000) as i32).unwrap_or(PollTimeout::ZERO)
            };
            match poll(&mut fds, timeout) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return false,
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            for (k, i) in open.iter().enumerate() {
                if !ready[k] {
                    continue;
                }
                match nix::unistd::read(&self.fds[*i], &mut buf) {
                    Ok(0) => self.eof[*i] = true,
                    Ok(n) => {
                        let _ = self.splitters[*i].feed(&buf[..n], log);
                    }
                    Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
                    Err(_) => self.eof[*i] = true,
                }
            }
            if sigfd.is_some() && ready.len() > open.len() && ready[open.len()] {
                return true;
            }
        }
    }

    fn finish(&mut self, log: &mut super::log_file::LogFile) {
        for s in &mut self.splitters {
            let _ = s.finish(log);
        }
    }
}

/// Reads the monitor's records for a container bundle.
pub fn read_started(bundle: &Path) -> Option<Started> {
    fsutil::read_json(&bundle.join("started.json"))
        .ok()
        .flatten()
}

pub fn read_exited(bundle: &Path) -> Option<Exited> {
    fsutil::read_json(&bundle.join("exit.json")).ok().flatten()
}

/// Whether the monitor of `bundle` is still alive (its pid exists and is a tinylet shim for this bundle).
pub fn is_alive(bundle: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(bundle.join("shim.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return false;
    };
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid)).unwrap_or_default();
    let bundle_arg = bundle.display().to_string();
    cmdline
        .split(|&b| b == 0)
        .any(|a| a == bundle_arg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_serde() {
        let dir = std::env::temp_dir().join(format!("tinylet-shim-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Started {
            pid: 42,
            started_at: "2026-11-27T17:00:00Z".into(),
        };
        s.write(&dir).unwrap();
        assert_eq!(read_started(&dir), Some(s));
        let e = Exited {
            exit_code: 128,
            signal: Some(9),
            oom_killed: true,
            finished_at: "2026-11-27T17:00:01Z".into(),
            start_error: Some("exec: \"/x\": no such file\n\ttab \\ done".into()),
        };
        e.write(&dir).unwrap();
        assert_eq!(read_exited(&dir), Some(e));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

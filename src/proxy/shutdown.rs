//! Cleanup at SIGTERM/SIGINT: the proxy's service addresses must not outlive it on the host.
//! The handler only writes the signal number to a pipe (async-signal-safe); a thread reads it,
//! runs the cleanup, restores the default action and raises the signal again, so the process
//! still ends the way it did without a proxy (killed by that signal).

use nix::sys::signal::{raise, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// The write end of the pipe, for the handler (signal handlers can reach nothing else).
static PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn handler(sig: nix::libc::c_int) {
    let fd = PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: fd is the pipe's write end, open for the process's life (never closed).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = nix::unistd::write(fd, &[sig as u8]);
    }
}

pub fn on_signal(cleanup: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("proxy: a pipe for signals: {}", e))?;
    PIPE.store(w.into_raw_fd(), Ordering::Relaxed);
    std::thread::Builder::new()
        .name("proxy-signals".into())
        .spawn(move || {
            let mut b = [0u8; 1];
            let sig = match nix::unistd::read(&r, &mut b) {
                Ok(1) => Signal::try_from(b[0] as i32).unwrap_or(Signal::SIGTERM),
                _ => return,
            };
            log::info!("proxy: {}: removing the service addresses", sig);
            cleanup();
            // SAFETY: restoring the default disposition installs no handler code.
            let _ = unsafe {
                sigaction(
                    sig,
                    &SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty()),
                )
            };
            let _ = raise(sig);
        })
        .map_err(|e| format!("proxy: starting the signal thread: {}", e))?;
    let action = SigAction::new(
        SigHandler::Handler(handler),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only loads an atomic and calls write(2), both async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .map_err(|e| format!("proxy: handling {}: {}", sig, e))?;
    }
    Ok(())
}

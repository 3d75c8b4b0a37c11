//! Moving bytes between a client and its endpoint: splice(2) through a pipe (the bytes never
//! enter user space), or a buffered copy where splice is refused. Each direction ends on its own
//! (half-close: EOF from one side becomes a FIN to the other, and the other direction keeps
//! going); an error in either direction resets both.
//!
//! Memory per connection is bounded and idle connections hold none: a direction waits for
//! readability with nothing allocated, borrows a pipe (or a 64 KiB buffer) from a pool only to
//! move what is there, and gives it back once it is empty. A pipe holds at most its capacity
//! (512 KiB asked, 64 KiB where refused), so one connection pins at most two of them while a
//! peer is slow to read.

use super::Shared;
use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use smol::Async;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// What one read moves at most (the buffered copy).
const CHUNK: usize = 64 * 1024;
/// The capacity asked for each pipe: fewer, larger splices for a fast stream. Its pages are
/// allocated only while bytes are in it; where the kernel refuses (pipe-max-size, an
/// unprivileged agent over its pipe quota) the pipe keeps its default 64 KiB.
const PIPE_SIZE: usize = 512 * 1024;
/// Chunks moved in a row before a direction yields to other tasks.
const FAIR_CHUNKS: u32 = 16;
/// Idle pipes and buffers kept for reuse; more are closed or freed when given back.
const POOL_MAX: usize = 64;

/// Pipes and buffers shared by every connection of the proxy.
pub struct Pool {
    splice: AtomicBool,
    pipes: Mutex<Vec<Pipe>>,
    buffers: Mutex<Vec<Box<[u8]>>>,
}

struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    /// Its capacity: what one splice into it moves at most.
    size: usize,
    /// Bytes in the pipe not yet spliced out.
    pending: usize,
}

enum Scratch {
    Pipe(Pipe),
    Buffer {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

impl Scratch {
    fn pending(&self) -> usize {
        match self {
            Scratch::Pipe(p) => p.pending,
            Scratch::Buffer { start, end, .. } => end - start,
        }
    }
}

impl Pool {
    /// `use_splice`: false forces the buffered copy (a kernel without splice for sockets, or
    /// a comparison run).
    pub fn new(use_splice: bool) -> Pool {
        Pool {
            splice: AtomicBool::new(use_splice),
            pipes: Mutex::new(Vec::new()),
            buffers: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Scratch {
        if self.splice.load(Ordering::Relaxed) {
            if let Some(p) = lock(&self.pipes).pop() {
                return Scratch::Pipe(p);
            }
            // Out of descriptors for a pipe: this transfer is copied instead.
            if let Ok((r, w)) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
                let size = fcntl(&w, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32))
                    .or_else(|_| fcntl(&w, FcntlArg::F_GETPIPE_SZ))
                    .map_or(CHUNK, |n| n as usize);
                return Scratch::Pipe(Pipe {
                    r,
                    w,
                    size,
                    pending: 0,
                });
            }
        }
        let buf = lock(&self.buffers)
            .pop()
            .unwrap_or_else(|| vec![0u8; CHUNK].into_boxed_slice());
        Scratch::Buffer {
            buf,
            start: 0,
            end: 0,
        }
    }

    /// Takes back an empty scratch (one with bytes in it belongs to a dead connection).
    fn give(&self, s: Scratch) {
        if s.pending() != 0 {
            return;
        }
        match s {
            Scratch::Pipe(p) => {
                let mut pipes = lock(&self.pipes);
                if pipes.len() < POOL_MAX {
                    pipes.push(p);
                }
            }
            Scratch::Buffer { buf, .. } => {
                let mut bufs = lock(&self.buffers);
                if bufs.len() < POOL_MAX {
                    bufs.push(buf);
                }
            }
        }
    }

    /// splice(2) refused for sockets (EINVAL): copy from now on.
    fn splice_unsupported(&self, e: Errno) {
        if self.splice.swap(false, Ordering::Relaxed) {
            log::warn!(
                "proxy: splice(2) is not available for sockets ({}); forwarding with a buffered copy",
                e
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Forwards both directions until both have ended (or one failed). A hand-written future
/// rather than an async fn: it is the whole state of an established connection, about 150
/// bytes, and waits with `poll_readable`/`poll_writable`, which keep one waker per direction in
/// the socket's registration instead of allocating a waiter list: this is what keeps ten
/// thousand idle connections within a few MiB.
pub struct Forward {
    client: Async<TcpStream>,
    endpoint: Async<TcpStream>,
    shared: Arc<Shared>,
    up: Direction,
    down: Direction,
}

#[derive(Default)]
struct Direction {
    /// Held only while bytes are on their way.
    scratch: Option<Scratch>,
    done: bool,
    /// Readability was waited for once: from then on it is asked before reading. (The first
    /// read is tried at once: a client's request is usually there already, and registering
    /// first would cost an epoll_ctl and a wake-up per connection.)
    waited: bool,
}

impl Forward {
    pub fn new(client: Async<TcpStream>, endpoint: Async<TcpStream>, shared: Arc<Shared>) -> Self {
        Forward {
            client,
            endpoint,
            shared,
            up: Direction::default(),
            down: Direction::default(),
        }
    }
}

impl Future for Forward {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Forward {
            client,
            endpoint,
            shared,
            up,
            down,
        } = self.get_mut();
        let pool = &shared.pool;
        for (dir, from, to) in [
            (&mut *up, &*client, &*endpoint),
            (&mut *down, &*endpoint, &*client),
        ] {
            if dir.done {
                continue;
            }
            match dir.poll(from, to, pool, cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => {
                    // EOF: pass the half-close on; the other direction carries on.
                    dir.done = true;
                    let _ = to.get_ref().shutdown(Shutdown::Write);
                }
                Poll::Ready(Err(e)) => {
                    // A reset or error on one side ends the connection (both are closed on drop).
                    log::debug!("proxy: connection ended: {}", e);
                    let _ = from.get_ref().shutdown(Shutdown::Both);
                    let _ = to.get_ref().shutdown(Shutdown::Both);
                    return Poll::Ready(());
                }
            }
        }
        if up.done && down.done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        for dir in [&mut self.up, &mut self.down] {
            if let Some(s) = dir.scratch.take() {
                self.shared.pool.give(s);
            }
        }
    }
}

impl Direction {
    /// Moves bytes until EOF from `from` (Ready(Ok)), an error, or nothing to do (Pending).
    fn poll(
        &mut self,
        from: &Async<TcpStream>,
        to: &Async<TcpStream>,
        pool: &Pool,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut budget = FAIR_CHUNKS;
        loop {
            let scratch = match &mut self.scratch {
                Some(s) => s,
                None if !self.waited => self.scratch.insert(pool.take()),
                // Idle: bytes are waited for with nothing borrowed.
                None => match from.poll_readable(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => self.scratch.insert(pool.take()),
                },
            };
            while scratch.pending() > 0 {
                match drain(scratch, to.get_ref()) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => match to.poll_writable(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(())) => {}
                    },
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            if budget == 0 {
                // A fast stream must not starve the other connections on this thread.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            match fill(scratch, from.get_ref(), pool) {
                Ok(0) => {
                    if let Some(s) = self.scratch.take() {
                        pool.give(s);
                    }
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Drained: give the scratch back; the next turn waits for readability.
                    if let Some(s) = self.scratch.take() {
                        pool.give(s);
                    }
                    self.waited = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Reads what `from` has into an empty scratch.
fn fill(s: &mut Scratch, mut from: &TcpStream, pool: &Pool) -> io::Result<usize> {
    match s {
        Scratch::Pipe(p) => {
            let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
            match splice(from, None, &p.w, None, p.size, flags) {
                Ok(n) => {
                    p.pending = n;
                    Ok(n)
                }
                Err(e @ (Errno::EINVAL | Errno::ENOSYS)) => {
                    pool.splice_unsupported(e);
                    // Nothing was moved: read this chunk with a buffer instead.
                    let mut buf = vec![0u8; CHUNK].into_boxed_slice();
                    let n = from.read(&mut buf)?;
                    *s = Scratch::Buffer {
                        buf,
                        start: 0,
                        end: n,
                    };
                    Ok(n)
                }
                Err(e) => Err(io::Error::from(e)),
            }
        }
        Scratch::Buffer { buf, start, end } => {
            let n = from.read(buf)?;
            *start = 0;
            *end = n;
            Ok(n)
        }
    }
}

/// Writes some of what the scratch holds to `to`.
fn drain(s: &mut Scratch, mut to: &TcpStream) -> io::Result<usize> {
    match s {
        Scratch::Pipe(p) => {
            let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
            let n = splice(&p.r, None, to, None, p.pending, flags).map_err(io::Error::from)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            p.pending -= n;
            Ok(n)
        }
        Scratch::Buffer { buf, start, end } => {
            let n = to.write(&buf[*start..*end])?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            *start += n;
            Ok(n)
        }
    }
}

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

use nix::errno::Errno;
use nix::fcntl::{fcntl, splice, FcntlArg, OFlag, SpliceFFlags};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// What one read moves at most (the buffered copy).
const CHUNK: usize = 64 * 1024;
/// The capacity asked for each pipe: fewer, larger splices for a fast stream. Its pages are
/// allocated only while bytes are in it; where the kernel refuses (pipe-max-size, an
/// unprivileged agent over its pipe quota) the pipe keeps its default 64 KiB.
const PIPE_SIZE: usize = 512 * 1024;
/// Chunks moved in a row before a direction yields to other connections.
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

/// One socket of a proxied connection and what its edge-triggered registration last said:
/// readable / writable until an operation returns EAGAIN, set again by the next event.
pub struct Side {
    pub sock: TcpStream,
    pub readable: bool,
    pub writable: bool,
}

impl Side {
    pub fn new(sock: TcpStream) -> Side {
        Side {
            sock,
            readable: false,
            writable: false,
        }
    }
}

/// What a call to [`Direction::pump`] left to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Nothing to move until the next readiness event.
    Wait,
    /// `from` sent its FIN and everything before it was passed on.
    Eof,
    /// Still readable after `FAIR_CHUNKS` chunks: pump again after the other connections had
    /// their turn (an edge-triggered registration will not report it again).
    Busy,
}

/// One direction of a connection: the bytes read from one side and not yet written to the
/// other. An idle direction holds nothing: the scratch is borrowed only while bytes move.
#[derive(Default)]
pub struct Direction {
    scratch: Option<Scratch>,
    pub done: bool,
}

impl Direction {
    /// Moves bytes from `from` to `to` as far as their readiness allows.
    pub fn pump(&mut self, from: &mut Side, to: &mut Side, pool: &Pool) -> io::Result<Pumped> {
        let mut budget = FAIR_CHUNKS;
        loop {
            if let Some(s) = &mut self.scratch {
                while s.pending() > 0 {
                    if !to.writable {
                        return Ok(Pumped::Wait);
                    }
                    match drain(s, &to.sock) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable = false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if !from.readable || budget == 0 {
                // Empty: give the scratch back while waiting.
                if let Some(s) = self.scratch.take() {
                    pool.give(s);
                }
                return Ok(if from.readable {
                    Pumped::Busy
                } else {
                    Pumped::Wait
                });
            }
            budget -= 1;
            let s = self.scratch.get_or_insert_with(|| pool.take());
            match fill(s, &from.sock, pool) {
                Ok(0) => {
                    if let Some(s) = self.scratch.take() {
                        pool.give(s);
                    }
                    return Ok(Pumped::Eof);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => from.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives a scratch held by a connection that is closing back to the pool.
    pub fn release(&mut self, pool: &Pool) {
        if let Some(s) = self.scratch.take() {
            pool.give(s);
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

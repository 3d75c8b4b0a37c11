//! TCP frontends: accept, dial an endpoint (short timeouts, the next endpoint on failure, as
//! the userspace kube-proxy did), then forward (forward.rs) until both sides are done.
//!
//! All of it runs on one thread of its own, "proxy-tcp", around an epoll set with
//! edge-triggered registrations, HAProxy's way: each socket is registered once, for reading
//! and writing, and closing it is what unregisters it. smol's reactor (async-io) registers
//! one-shot and re-arms at every wait, and its timers cost a timerfd and an eventfd wake-up:
//! about a dozen epoll_ctl and timer calls per proxied connection, which kept the connection
//! rate below HAProxy's. Here a connection costs accept4, socket, connect, two epoll_ctl, the
//! splices and the closes. Dial timeouts are a queue per timeout step (deadlines in each are
//! in order), checked at each wake-up, so no timer is armed per dial.
//!
//! Running out of file descriptors pauses accepting (the connection waits in the backlog)
//! instead of failing the proxy.

use super::balancer::Balancer;
use super::forward::{Direction, Pool, Pumped, Side};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Dial timeouts for the first, second, ... endpoint tried (the userspace kube-proxy's).
const DIAL_TIMEOUTS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];
/// How long accepting pauses when the process is out of descriptors or memory.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Connections accepted in a row before the others get a turn.
const ACCEPT_BATCH: usize = 64;
/// Events taken from the kernel per wake-up.
const EVENTS: usize = 256;

/// Binds a frontend. TCP_NODELAY is set on the listener because accepted sockets inherit it
/// (one setsockopt per frontend instead of one per connection).
pub fn bind(addr: SocketAddrV4) -> io::Result<TcpListener> {
    // std sets SO_REUSEADDR, so a frontend removed and added again binds at once although
    // connections from its previous life are in TIME_WAIT.
    let l = TcpListener::bind(SocketAddr::V4(addr))?;
    l.set_nonblocking(true)?;
    socket::setsockopt(&l, sockopt::TcpNoDelay, &true).map_err(io::Error::from)?;
    Ok(l)
}

/// The way to the TCP threads, for the thread that opens and closes frontends.
#[derive(Clone)]
pub struct Handle(Arc<Threads>);

struct Threads {
    inboxes: Vec<Inbox>,
    next_id: AtomicU64,
}

struct Inbox {
    commands: Mutex<Vec<Command>>,
    wake: EventFd,
}

enum Command {
    /// Every thread serves every listener: an idle thread is woken for a new connection
    /// (EPOLLEXCLUSIVE: only one of them).
    Listen(u64, Arc<TcpListener>, Arc<Balancer>),
    /// Answered once the thread has dropped the listener; it is closed when all have (so
    /// its port can be bound again).
    Close(u64, mpsc::Sender<()>),
}

/// A frontend served by the TCP thread; dropping it closes the listener (connections accepted
/// through it carry on).
pub struct Listening {
    id: u64,
    handle: Handle,
}

impl Handle {
    /// Serves `listener` (from [`bind`]) with `balancer` until the result is dropped.
    pub fn serve(&self, listener: TcpListener, balancer: Arc<Balancer>) -> Listening {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let listener = Arc::new(listener);
        for i in 0..self.0.inboxes.len() {
            self.send(i, Command::Listen(id, listener.clone(), balancer.clone()));
        }
        Listening {
            id,
            handle: self.clone(),
        }
    }

    fn send(&self, thread: usize, c: Command) {
        let inbox = &self.0.inboxes[thread];
        lock(&inbox.commands).push(c);
        if let Err(e) = inbox.wake.write(1) {
            log::error!("proxy: waking the TCP thread: {}", e);
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let (tx, rx) = mpsc::channel();
        let threads = self.handle.0.inboxes.len();
        for i in 0..threads {
            self.handle.send(i, Command::Close(self.id, tx.clone()));
        }
        // Each thread answers within one turn of its loop; a frontend added again on the same
        // address binds only once this one is closed.
        let deadline = Instant::now() + Duration::from_secs(1);
        for _ in 0..threads {
            if rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_err()
            {
                break;
            }
        }
    }
}

/// Starts `threads` TCP threads, each with a pool of pipes (`splice`) or buffers.
pub fn start(threads: usize, splice: bool) -> io::Result<Handle> {
    let mut inboxes = Vec::new();
    let mut epolls = Vec::new();
    for _ in 0..threads.max(1) {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(
            &wake,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, WAKE),
        )?;
        epolls.push(epoll);
        inboxes.push(Inbox {
            commands: Mutex::new(Vec::new()),
            wake,
        });
    }
    let handle = Handle(Arc::new(Threads {
        inboxes,
        next_id: AtomicU64::new(0),
    }));
    for (thread, epoll) in epolls.into_iter().enumerate() {
        let mut l = Loop {
            epoll,
            thread,
            threads: handle.0.clone(),
            pool: Pool::new(splice),
            listeners: HashMap::new(),
            conns: Slab::default(),
            dials: Default::default(),
            paused: Vec::new(),
            again: Vec::new(),
            warned: None,
            starved: None,
        };
        std::thread::Builder::new()
            .name(format!("proxy-tcp-{}", thread))
            .spawn(move || l.run())?;
    }
    Ok(handle)
}

// Event tokens: the kind in the top two bits; for connections the slot's generation (so an
// event for a connection closed earlier in the same batch is not taken for its slot's next
// occupant) and the slot index.
const WAKE: u64 = 0;
const LISTENER: u64 = 1 << 62;
const CLIENT: u64 = 2 << 62;
const ENDPOINT: u64 = 3 << 62;
const KIND: u64 = 3 << 62;

struct Listener {
    sock: Arc<TcpListener>,
    balancer: Arc<Balancer>,
}

struct Conn {
    client: Side,
    /// None only between dial attempts.
    endpoint: Option<Side>,
    /// Some while dialing; freed once connected, so an established connection holds only
    /// its two sides and directions.
    dial: Option<Box<Dial>>,
    up: Direction,
    down: Direction,
}

struct Dial {
    peer: SocketAddr,
    balancer: Arc<Balancer>,
    plan: Vec<SocketAddrV4>,
    /// Index in `plan` of the endpoint being dialed.
    attempt: usize,
}

/// What the loop does with a connection after handling it.
enum Next {
    Keep,
    Close,
    /// Pump again after this turn (see [`Pumped::Busy`]).
    Again,
}

struct Loop {
    epoll: Epoll,
    /// This loop's inbox in `threads`.
    thread: usize,
    threads: Arc<Threads>,
    pool: Pool,
    listeners: HashMap<u64, Listener>,
    conns: Slab<Conn>,
    /// Pending dial deadlines, one queue per step of `DIAL_TIMEOUTS` (each queue is in
    /// deadline order): (deadline, token, attempt). Entries of dials that completed are
    /// skipped when they come due.
    dials: [VecDeque<(Instant, u64, usize)>; DIAL_TIMEOUTS.len()],
    /// Listeners whose accepting pauses until then (out of descriptors).
    paused: Vec<(Instant, u64)>,
    /// Tokens to handle again without waiting: busy connections, listeners with more to accept.
    again: Vec<u64>,
    warned: Option<Instant>,
    /// Set when a dial found no descriptor (or memory) for its socket: accepting pauses.
    starved: Option<io::Error>,
}

impl Loop {
    fn run(&mut self) {
        let mut events = vec![EpollEvent::empty(); EVENTS];
        loop {
            let n = match self.epoll.wait(&mut events, self.timeout()) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    // Cannot happen with a valid epoll descriptor and buffer; do not spin.
                    log::error!("proxy: epoll_wait: {}", e);
                    std::thread::sleep(Duration::from_millis(100));
                    0
                }
            };
            let again = std::mem::take(&mut self.again);
            for ev in &events[..n] {
                self.event(ev.data(), ev.events());
            }
            for token in again {
                self.event(token, EpollFlags::empty());
            }
            self.expire(Instant::now());
        }
    }

    /// Until the next dial deadline or paused listener; none while work is left over.
    fn timeout(&self) -> EpollTimeout {
        if !self.again.is_empty() {
            return EpollTimeout::ZERO;
        }
        let next = self
            .dials
            .iter()
            .filter_map(|q| q.front().map(|d| d.0))
            .chain(self.paused.iter().map(|p| p.0))
            .min();
        match next {
            None => EpollTimeout::NONE,
            Some(t) => {
                // Rounded up: waking before the deadline would only mean waiting again.
                let ms = t
                    .saturating_duration_since(Instant::now())
                    .as_micros()
                    .div_ceil(1000);
                EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
            }
        }
    }

    fn event(&mut self, token: u64, flags: EpollFlags) {
        match token & KIND {
            WAKE => self.commands(),
            LISTENER => self.accept(token & !KIND),
            kind => {
                let Some(conn) = self.conns.get_mut(token) else {
                    return; // closed earlier in this batch
                };
                let side = if kind == CLIENT {
                    Some(&mut conn.client)
                } else {
                    conn.endpoint.as_mut()
                };
                if let Some(side) = side {
                    let err = EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP;
                    side.readable |=
                        flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | err);
                    side.writable |= flags.intersects(EpollFlags::EPOLLOUT | err);
                }
                let next = if conn.dial.is_some() {
                    if kind == ENDPOINT && conn.endpoint.as_ref().is_some_and(|s| s.writable) {
                        self.dialed(token, flags)
                    } else {
                        Next::Keep
                    }
                } else {
                    pump(conn, &self.pool)
                };
                self.after(token, next);
            }
        }
    }

    fn after(&mut self, token: u64, next: Next) {
        match next {
            Next::Keep => {}
            Next::Again => self.again.push(token),
            Next::Close => {
                if let Some(mut conn) = self.conns.remove(token) {
                    conn.up.release(&self.pool);
                    conn.down.release(&self.pool);
                }
            }
        }
    }

    fn commands(&mut self) {
        let inbox = &self.threads.inboxes[self.thread];
        let _ = inbox.wake.read();
        let commands = std::mem::take(&mut *lock(&inbox.commands));
        for c in commands {
            match c {
                Command::Listen(id, sock, balancer) => {
                    let flags =
                        EpollFlags::EPOLLIN | EpollFlags::EPOLLET | EpollFlags::EPOLLEXCLUSIVE;
                    let ev = EpollEvent::new(flags, LISTENER | id);
                    match self.epoll.add(&sock, ev) {
                        Ok(()) => {
                            self.listeners.insert(id, Listener { sock, balancer });
                            // Connections may already wait in the backlog.
                            self.again.push(LISTENER | id);
                        }
                        Err(e) => log::error!(
                            "proxy: cannot serve {:?}: epoll: {}",
                            sock.local_addr().ok(),
                            e
                        ),
                    }
                }
                Command::Close(id, done) => {
                    self.listeners.remove(&id);
                    self.paused.retain(|p| p.1 != LISTENER | id);
                    let _ = done.send(());
                }
            }
        }
    }

    /// Accepts what waits on listener `id` (a batch; the rest next turn).
    fn accept(&mut self, id: u64) {
        if self.paused.iter().any(|p| p.1 == LISTENER | id) {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let Some(l) = self.listeners.get(&id) else {
                return;
            };
            match accept4(&l.sock) {
                Ok((sock, peer)) => {
                    let balancer = l.balancer.clone();
                    self.open(sock, peer, balancer);
                    // The client took the last descriptor and its dial found none: this
                    // connection is closed; the next ones wait in the backlog.
                    if let Some(e) = self.starved.take() {
                        self.pause(id, e);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if out_of_resources(&e) => {
                    self.pause(id, e);
                    return;
                }
                // The client gave up before accept (ECONNABORTED) and the like: nothing to do.
                Err(e) => log::debug!("proxy: accept: {}", e),
            }
        }
        self.again.push(LISTENER | id);
    }

    /// Stops accepting on listener `id` for `ACCEPT_PAUSE` (out of descriptors or memory).
    fn pause(&mut self, id: u64, e: io::Error) {
        if self
            .warned
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            log::warn!(
                "proxy: accepting on {:?}: {}; pausing new connections until some close",
                self.listeners
                    .get(&id)
                    .and_then(|l| l.sock.local_addr().ok()),
                e
            );
            self.warned = Some(Instant::now());
        }
        self.paused
            .push((Instant::now() + ACCEPT_PAUSE, LISTENER | id));
    }

    fn open(&mut self, sock: TcpStream, peer: SocketAddr, balancer: Arc<Balancer>) {
        let plan = balancer.plan(peer.ip());
        if plan.is_empty() {
            // No endpoints: the client sees the connection closed, as with the userspace proxy
            // (iptables mode rejects the SYN; a listener cannot).
            log::debug!("proxy: {} -> no endpoints", peer);
            return;
        }
        let token = self.conns.insert(Conn {
            client: Side::new(sock),
            endpoint: None,
            dial: Some(Box::new(Dial {
                peer,
                balancer,
                plan,
                attempt: 0,
            })),
            up: Direction::default(),
            down: Direction::default(),
        });
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if let Err(e) = register(&self.epoll, &conn.client.sock, CLIENT | token) {
            log::warn!("proxy: {}: epoll: {}", peer, e);
            self.conns.remove(token);
            return;
        }
        let next = self.dial_from(token, 0);
        self.after(token, next);
    }

    /// Dials the plan's endpoints from `attempt` on until one dial is under way.
    fn dial_from(&mut self, token: u64, mut attempt: usize) -> Next {
        let Some(conn) = self.conns.get_mut(token) else {
            return Next::Keep;
        };
        let Some(dial) = conn.dial.as_mut() else {
            return Next::Keep;
        };
        conn.endpoint = None;
        while let Some(&ep) = dial.plan.get(attempt) {
            dial.attempt = attempt;
            match connect(ep).and_then(|s| {
                register(&self.epoll, &s, ENDPOINT | token)?;
                Ok(s)
            }) {
                Ok(sock) => {
                    conn.endpoint = Some(Side::new(sock));
                    let step = attempt.min(DIAL_TIMEOUTS.len() - 1);
                    self.dials[step].push_back((
                        Instant::now() + DIAL_TIMEOUTS[step],
                        token,
                        attempt,
                    ));
                    return Next::Keep;
                }
                Err(e) if out_of_resources(&e) => {
                    // The other endpoints would fail alike.
                    log::debug!("proxy: {} -> {}: {}", dial.peer, ep, e);
                    self.starved = Some(e);
                    return Next::Close;
                }
                Err(e) => log::debug!("proxy: {} -> {}: {}", dial.peer, ep, e),
            }
            attempt += 1;
        }
        log::info!(
            "proxy: {}: no endpoint of {} answered; closing the connection",
            dial.peer,
            dial.plan
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        Next::Close
    }

    /// The endpoint being dialed reported writable: connected, or failed.
    fn dialed(&mut self, token: u64, flags: EpollFlags) -> Next {
        let Some(conn) = self.conns.get_mut(token) else {
            return Next::Keep;
        };
        let (Some(dial), Some(endpoint)) = (conn.dial.as_ref(), conn.endpoint.as_ref()) else {
            return Next::Keep;
        };
        let ep = dial.plan[dial.attempt];
        // Writable without an error flag is a completed connect: no getsockopt needed.
        let failed = if flags.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP) {
            Some(match endpoint.sock.take_error() {
                Ok(Some(e)) | Err(e) => e,
                Ok(None) => io::Error::new(io::ErrorKind::ConnectionAborted, "hung up"),
            })
        } else {
            None
        };
        if let Some(e) = failed {
            log::debug!("proxy: {} -> {}: {}", dial.peer, ep, e);
            let next = dial.attempt + 1;
            return self.dial_from(token, next);
        }
        dial.balancer.connected(dial.peer.ip(), ep);
        log::debug!("proxy: {} -> {}", dial.peer, ep);
        conn.dial = None;
        pump(conn, &self.pool)
    }

    /// Dials past their deadline move on to the next endpoint; paused listeners resume.
    fn expire(&mut self, now: Instant) {
        for (step, timeout) in DIAL_TIMEOUTS.iter().enumerate() {
            while let Some(&(deadline, token, attempt)) = self.dials[step].front() {
                // Entries of dials that completed are dropped as soon as they reach the front
                // (dials mostly complete in order), so they never cause a wake-up.
                let live = self.conns.get_mut(token).and_then(|c| c.dial.as_ref());
                let Some(dial) = live.filter(|d| d.attempt == attempt) else {
                    self.dials[step].pop_front();
                    continue;
                };
                if deadline > now {
                    break;
                }
                self.dials[step].pop_front();
                log::debug!(
                    "proxy: {} -> {}: no answer within {:?}",
                    dial.peer,
                    dial.plan[attempt],
                    timeout
                );
                let next = self.dial_from(token, attempt + 1);
                self.after(token, next);
            }
        }
        let (due, paused): (Vec<_>, Vec<_>) = self.paused.drain(..).partition(|p| p.0 <= now);
        self.paused = paused;
        for (_, token) in due {
            self.accept(token & !KIND);
        }
    }
}

/// Moves what both directions can; EOF from one side is passed on as a FIN (half-close) and
/// the other direction carries on; an error on either side ends both.
fn pump(conn: &mut Conn, pool: &Pool) -> Next {
    let Some(endpoint) = conn.endpoint.as_mut() else {
        return Next::Keep;
    };
    let client = &mut conn.client;
    let mut next = Next::Keep;
    for upstream in [true, false] {
        let (dir, from, to) = if upstream {
            (&mut conn.up, &mut *client, &mut *endpoint)
        } else {
            (&mut conn.down, &mut *endpoint, &mut *client)
        };
        if dir.done {
            continue;
        }
        match dir.pump(from, to, pool) {
            Ok(Pumped::Wait) => {}
            Ok(Pumped::Busy) => next = Next::Again,
            Ok(Pumped::Eof) => {
                dir.done = true;
                let _ = to.sock.shutdown(Shutdown::Write);
            }
            Err(e) => {
                // A reset or error on one side ends the connection (both are closed on drop).
                log::debug!("proxy: connection ended: {}", e);
                let _ = from.sock.shutdown(Shutdown::Both);
                let _ = to.sock.shutdown(Shutdown::Both);
                return Next::Close;
            }
        }
    }
    if conn.up.done && conn.down.done {
        Next::Close
    } else {
        next
    }
}

/// Once, for reading and writing, edge-triggered; closing the socket unregisters it.
fn register(epoll: &Epoll, sock: &TcpStream, token: u64) -> io::Result<()> {
    let flags =
        EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
    epoll.add(sock, EpollEvent::new(flags, token))?;
    Ok(())
}

/// accept4(2) with the socket non-blocking from the start (std's accept would need a
/// further fcntl) and the peer's address (for affinity) in the same call.
fn accept4(l: &TcpListener) -> io::Result<(TcpStream, SocketAddr)> {
    // SAFETY: sockaddr_in is plain data; the kernel writes at most `len` bytes into it.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` and `len` outlive the call; the descriptor returned is owned below.
    let fd = unsafe {
        libc::accept4(
            l.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let sock = TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // The listeners are IPv4 (tinylet's proxy is IPv4 only).
    let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    let peer = SocketAddr::new(IpAddr::V4(ip), u16::from_be(addr.sin_port));
    Ok((sock, peer))
}

/// Starts a non-blocking connect to `ep` (with TCP_NODELAY, as the client side inherits it).
fn connect(ep: SocketAddrV4) -> io::Result<TcpStream> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let _ = socket::setsockopt(&fd, sockopt::TcpNoDelay, &true);
    match socket::connect(fd.as_raw_fd(), &SockaddrIn::from(ep)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok(TcpStream::from(fd)),
        Err(e) => Err(e.into()),
    }
}

fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connections by token: a slot index and the slot's generation, so a token outlives neither.
struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

const INDEX_BITS: u32 = 32;
const GEN_MASK: u32 = (1 << 30) - 1;

impl<T> Slab<T> {
    fn insert(&mut self, item: T) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push((0, None));
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.0 = (slot.0 + 1) & GEN_MASK;
        slot.1 = Some(item);
        ((slot.0 as u64) << INDEX_BITS) | index as u64
    }

    fn slot(&mut self, token: u64) -> Option<&mut (u32, Option<T>)> {
        let token = token & !KIND;
        let index = (token & u32::MAX as u64) as usize;
        let gen = (token >> INDEX_BITS) as u32;
        self.slots.get_mut(index).filter(|s| s.0 == gen)
    }

    fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        self.slot(token).and_then(|s| s.1.as_mut())
    }

    fn remove(&mut self, token: u64) -> Option<T> {
        let index = (token & u32::MAX as u64) as u32;
        let item = self.slot(token).and_then(|s| s.1.take());
        if item.is_some() {
            self.free.push(index);
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_outlives_neither_its_slot_nor_its_generation() {
        let mut s = Slab::default();
        let a = s.insert("a");
        assert_eq!(s.get_mut(CLIENT | a), Some(&mut "a"));
        assert_eq!(s.remove(ENDPOINT | a), Some("a"));
        assert_eq!(s.get_mut(a), None);
        let b = s.insert("b");
        assert_ne!(a, b, "the slot is reused with a new generation");
        assert_eq!(s.get_mut(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get_mut(b), Some(&mut "b"));
    }
}

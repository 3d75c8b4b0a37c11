//! TCP frontends: accept, dial an endpoint (short timeouts, the next endpoint on failure, as
//! the userspace kube-proxy did), then forward (forward.rs) until both sides are done.
//!
//! Running out of file descriptors pauses accepting (the connection waits in the backlog)
//! instead of failing the proxy.

use super::balancer::Balancer;
use super::Shared;
use smol::{Async, Timer};
use std::io;
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
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

pub fn listen(addr: SocketAddrV4) -> io::Result<Async<TcpListener>> {
    // std sets SO_REUSEADDR, so a frontend removed and added again binds at once although
    // connections from its previous life are in TIME_WAIT.
    Async::<TcpListener>::bind(SocketAddr::V4(addr))
}

/// Accepts until the task is dropped (the frontend removed).
pub async fn serve(listener: Async<TcpListener>, balancer: Arc<Balancer>, shared: Arc<Shared>) {
    let mut warned: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let (b, s) = (balancer.clone(), shared.clone());
                shared
                    .executor
                    .spawn(async move { connection(client, peer, b, s).await })
                    .detach();
            }
            Err(e) if out_of_resources(&e) => {
                if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    log::warn!(
                        "proxy: accepting on {:?}: {}; pausing new connections until some close",
                        listener.get_ref().local_addr().ok(),
                        e
                    );
                    warned = Some(Instant::now());
                }
                Timer::after(ACCEPT_PAUSE).await;
            }
            // The client gave up before accept (ECONNABORTED) and the like: nothing to do.
            Err(e) => log::debug!("proxy: accept: {}", e),
        }
    }
}

fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

mod libc_errno {
    pub const EMFILE: i32 = nix::errno::Errno::EMFILE as i32;
    pub const ENFILE: i32 = nix::errno::Errno::ENFILE as i32;
    pub const ENOBUFS: i32 = nix::errno::Errno::ENOBUFS as i32;
    pub const ENOMEM: i32 = nix::errno::Errno::ENOMEM as i32;
}

async fn connection(
    client: Async<TcpStream>,
    peer: SocketAddr,
    balancer: Arc<Balancer>,
    shared: Arc<Shared>,
) {
    let plan = balancer.plan(peer.ip());
    if plan.is_empty() {
        // No endpoints: the client sees the connection closed, as with the userspace proxy
        // (iptables mode rejects the SYN; a listener cannot).
        log::debug!("proxy: {} -> no endpoints", peer);
        return;
    }
    for (i, ep) in plan.iter().enumerate() {
        let timeout = DIAL_TIMEOUTS[i.min(DIAL_TIMEOUTS.len() - 1)];
        match dial(*ep, timeout).await {
            Ok(endpoint) => {
                balancer.connected(peer.ip(), *ep);
                let _ = client.get_ref().set_nodelay(true);
                let _ = endpoint.get_ref().set_nodelay(true);
                log::debug!("proxy: {} -> {}", peer, ep);
                // A task of its own, so the dial's state is freed: an established connection
                // holds only the forwarding state.
                let forward = super::forward::Forward::new(client, endpoint, shared.clone());
                shared.executor.spawn(forward).detach();
                return;
            }
            Err(e) => log::debug!("proxy: {} -> {}: {}", peer, ep, e),
        }
    }
    log::info!(
        "proxy: {}: no endpoint of {} answered; closing the connection",
        peer,
        plan.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
}

async fn dial(ep: SocketAddrV4, timeout: Duration) -> io::Result<Async<TcpStream>> {
    smol::future::or(Async::<TcpStream>::connect(SocketAddr::V4(ep)), async {
        Timer::after(timeout).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {:?}", timeout),
        ))
    })
    .await
}

//! UDP frontends: one flow per client address, each with its own connected socket to the
//! endpoint chosen for it (so replies are told apart), ended after `FLOW_IDLE` without a
//! datagram either way, when the endpoint refuses (ICMP unreachable) or when it leaves the
//! service (as kube-proxy clears conntrack entries of removed UDP endpoints).

use super::balancer::Balancer;
use super::Shared;
use smol::{Async, Task, Timer};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// nf_conntrack's default timeout for an unreplied-or-replied UDP flow.
pub const FLOW_IDLE: Duration = Duration::from_secs(30);
/// Flows per frontend; datagrams of further clients are dropped until some end.
const MAX_FLOWS: usize = 4096;
const DATAGRAM_MAX: usize = 65536;

pub fn listen(addr: SocketAddrV4) -> io::Result<Async<UdpSocket>> {
    Async::<UdpSocket>::bind(SocketAddr::V4(addr))
}

struct Flow {
    endpoint: SocketAddrV4,
    socket: Arc<Async<UdpSocket>>,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: Arc<AtomicU64>,
    task: Task<()>,
}

/// Receives until the task is dropped (the frontend removed); dropping it ends every flow.
pub async fn serve(frontend: Async<UdpSocket>, balancer: Arc<Balancer>, shared: Arc<Shared>) {
    let frontend = Arc::new(frontend);
    let epoch = Instant::now();
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    let mut swept = Instant::now();
    loop {
        let (n, client) = match frontend.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                log::debug!("proxy: udp recv: {}", e);
                Timer::after(Duration::from_millis(10)).await;
                continue;
            }
        };
        if swept.elapsed() > Duration::from_secs(1) || flows.len() >= MAX_FLOWS {
            flows.retain(|_, f| !f.task.is_finished());
            swept = Instant::now();
        }
        let stale = flows
            .get(&client)
            .is_some_and(|f| f.task.is_finished() || !balancer.has(f.endpoint));
        if stale {
            flows.remove(&client);
        }
        if !flows.contains_key(&client) {
            if flows.len() >= MAX_FLOWS {
                log::debug!(
                    "proxy: udp: {} flows, dropping a datagram of {}",
                    MAX_FLOWS,
                    client
                );
                continue;
            }
            match open_flow(client, &frontend, &balancer, &shared, epoch) {
                Some(f) => {
                    flows.insert(client, f);
                }
                None => continue,
            }
        }
        let Some(flow) = flows.get(&client) else {
            continue;
        };
        flow.last
            .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Err(e) = flow.socket.send(&buf[..n]).await {
            log::debug!("proxy: udp {} -> {}: {}", client, flow.endpoint, e);
            flows.remove(&client);
        }
    }
}

fn open_flow(
    client: SocketAddr,
    frontend: &Arc<Async<UdpSocket>>,
    balancer: &Balancer,
    shared: &Shared,
    epoch: Instant,
) -> Option<Flow> {
    // A UDP "dial" cannot fail until the endpoint answers; take the first of the plan.
    let endpoint = *balancer.plan(client.ip()).first()?;
    let socket = match Async::<UdpSocket>::bind(([0, 0, 0, 0], 0)).and_then(|s| {
        s.get_ref().connect(endpoint)?;
        Ok(s)
    }) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            log::warn!("proxy: udp flow {} -> {}: {}", client, endpoint, e);
            return None;
        }
    };
    balancer.connected(client.ip(), endpoint);
    let last = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
    let task = shared.executor.spawn(replies(
        socket.clone(),
        frontend.clone(),
        client,
        last.clone(),
        epoch,
    ));
    Some(Flow {
        endpoint,
        socket,
        last,
        task,
    })
}

/// Sends the endpoint's datagrams back to the client from the frontend's address, until the
/// flow is idle or the endpoint refuses.
async fn replies(
    socket: Arc<Async<UdpSocket>>,
    frontend: Arc<Async<UdpSocket>>,
    client: SocketAddr,
    last: Arc<AtomicU64>,
    epoch: Instant,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let idle_for = epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        if idle_for >= FLOW_IDLE {
            return;
        }
        let got = smol::future::or(async { Some(socket.recv(&mut buf).await) }, async {
            Timer::after(FLOW_IDLE - idle_for).await;
            None
        })
        .await;
        match got {
            None => continue, // re-check: the client may have sent meanwhile
            Some(Ok(n)) => {
                last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                if let Err(e) = frontend.send_to(&buf[..n], client).await {
                    log::debug!("proxy: udp reply to {}: {}", client, e);
                }
            }
            Some(Err(e)) => {
                // ECONNREFUSED: nothing listens at the endpoint; the next datagram starts a
                // new flow, to the next endpoint.
                log::debug!("proxy: udp flow of {}: {}", client, e);
                return;
            }
        }
    }
}

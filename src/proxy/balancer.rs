//! Picks endpoints for one service port, as kube-proxy does: round robin over the ready
//! endpoints, or, when none is ready, over the ones still serving while they terminate (so a
//! rolling update does not refuse connections); ClientIP affinity sends a client back to the
//! endpoint it last used until it has been quiet for the timeout.
//!
//! A balancer lives as long as its service port does and its endpoints are replaced in place,
//! so the round-robin position and the affinity table survive endpoint changes.

use super::table::ServicePort;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Balancer {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The endpoints in use: the ready ones, else the serving-and-terminating ones.
    endpoints: Vec<SocketAddrV4>,
    next: usize,
    affinity: Option<Duration>,
    clients: HashMap<IpAddr, (SocketAddrV4, Instant)>,
    /// Size of `clients` after the last sweep of expired entries.
    swept_at: usize,
}

impl Balancer {
    pub fn new(sp: &ServicePort) -> Balancer {
        let b = Balancer::default();
        b.update(sp);
        b
    }

    /// New endpoints (or affinity settings) from the table.
    pub fn update(&self, sp: &ServicePort) {
        let ready: Vec<_> = sp
            .endpoints
            .iter()
            .filter(|e| e.ready)
            .map(|e| e.addr)
            .collect();
        let usable = if ready.is_empty() {
            sp.endpoints
                .iter()
                .filter(|e| e.serving && e.terminating)
                .map(|e| e.addr)
                .collect()
        } else {
            ready
        };
        let mut s = self.lock();
        s.endpoints = usable;
        if s.affinity != sp.affinity {
            s.clients.clear();
        }
        s.affinity = sp.affinity;
        let State {
            clients, endpoints, ..
        } = &mut *s;
        clients.retain(|_, (ep, _)| endpoints.contains(ep));
    }

    /// Endpoints to dial for a connection (or UDP flow) from `client`, best first: the
    /// affinity endpoint if any, else the next in round robin, then the others in turn as
    /// fallbacks for failed dials. Empty: nothing to send the client to.
    pub fn plan(&self, client: IpAddr) -> Vec<SocketAddrV4> {
        let mut s = self.lock();
        let n = s.endpoints.len();
        if n == 0 {
            return Vec::new();
        }
        let now = Instant::now();
        let mut first = None;
        if let Some(timeout) = s.affinity {
            if s.clients.len() > 2 * s.swept_at.max(512) {
                s.clients
                    .retain(|_, (_, used)| now.duration_since(*used) < timeout);
                s.swept_at = s.clients.len();
            }
            if let Some((ep, used)) = s.clients.get(&client) {
                if now.duration_since(*used) < timeout {
                    first = s.endpoints.iter().position(|e| e == ep);
                }
            }
        }
        let start = match first {
            Some(i) => i,
            None => {
                let i = s.next % n;
                s.next = (i + 1) % n;
                i
            }
        };
        (0..n).map(|k| s.endpoints[(start + k) % n]).collect()
    }

    /// Records that `client` got through to `endpoint` (its affinity from now on).
    pub fn connected(&self, client: IpAddr, endpoint: SocketAddrV4) {
        let mut s = self.lock();
        if s.affinity.is_some() {
            s.clients.insert(client, (endpoint, Instant::now()));
        }
    }

    /// Whether `endpoint` is still one to use (a UDP flow to a removed one is ended).
    pub fn has(&self, endpoint: SocketAddrV4) -> bool {
        self.lock().endpoints.contains(&endpoint)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves nothing half-done worth refusing.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::table::Endpoint;

    fn ep(last: u8, ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addr: SocketAddrV4::new([10, 0, 0, last].into(), 80),
            ready,
            serving,
            terminating,
        }
    }

    fn sp(endpoints: Vec<Endpoint>, affinity: Option<Duration>) -> ServicePort {
        ServicePort {
            name: "default/web:".into(),
            endpoints,
            affinity,
        }
    }

    fn last(a: SocketAddrV4) -> u8 {
        a.ip().octets()[3]
    }

    const C1: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 1));
    const C2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 2));

    #[test]
    fn round_robin_over_ready_endpoints_with_the_rest_as_fallbacks() {
        let b = Balancer::new(&sp(
            vec![
                ep(1, true, true, false),
                ep(2, false, false, false),
                ep(3, true, true, false),
                ep(4, true, true, false),
            ],
            None,
        ));
        let firsts: Vec<u8> = (0..6).map(|_| last(b.plan(C1)[0])).collect();
        assert_eq!(firsts, [1, 3, 4, 1, 3, 4]);
        b.plan(C1);
        assert_eq!(
            b.plan(C1).into_iter().map(last).collect::<Vec<_>>(),
            [3, 4, 1]
        );
    }

    #[test]
    fn serving_terminating_endpoints_only_when_none_is_ready() {
        let b = Balancer::new(&sp(
            vec![ep(1, false, true, true), ep(2, false, false, true)],
            None,
        ));
        assert_eq!(b.plan(C1).into_iter().map(last).collect::<Vec<_>>(), [1]);
        b.update(&sp(
            vec![ep(1, false, true, true), ep(3, true, true, false)],
            None,
        ));
        assert_eq!(b.plan(C1).into_iter().map(last).collect::<Vec<_>>(), [3]);
        b.update(&sp(vec![], None));
        assert!(b.plan(C1).is_empty());
    }

    #[test]
    fn client_ip_affinity_until_its_timeout_or_the_endpoint_goes() {
        let all = vec![ep(1, true, true, false), ep(2, true, true, false)];
        let b = Balancer::new(&sp(all.clone(), Some(Duration::from_secs(60))));
        let first = b.plan(C1)[0];
        b.connected(C1, first);
        for _ in 0..5 {
            assert_eq!(b.plan(C1)[0], first);
        }
        // Another client is balanced independently.
        let other = b.plan(C2)[0];
        b.connected(C2, other);
        // The affinity endpoint removed: the client moves on.
        let rest: Vec<Endpoint> = all.iter().filter(|e| e.addr != first).cloned().collect();
        b.update(&sp(rest, Some(Duration::from_secs(60))));
        assert_ne!(b.plan(C1)[0], first);
        // An expired entry is ignored.
        let b = Balancer::new(&sp(all, Some(Duration::from_millis(1))));
        let first = b.plan(C1)[0];
        b.connected(C1, first);
        std::thread::sleep(Duration::from_millis(5));
        assert_ne!(b.plan(C1)[0], first);
    }
}

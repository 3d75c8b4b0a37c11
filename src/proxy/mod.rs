//! The service proxy (`--proxy-mode=userspace`), a pipeline of its own beside the kubelet:
//! Services + EndpointSlices (watch.rs) -> routing table (table.rs) -> service addresses on
//! `lo` (addresses.rs) and listeners (tcp.rs, udp.rs) that balance (balancer.rs) and forward
//! (forward.rs). docs/PROXY.md says why addresses on `lo` rather than iptables redirects.
//!
//! Threads: one per watch (blocking HTTP, like the rest of the agent), one "sync" thread that
//! owns the table and the addresses, the TCP thread (tcp.rs: its own epoll loop, which owns
//! every TCP socket) and the smol executor's threads (UDP frontends and the reconciler).
//! A table change reaches the listeners as a message; balancers are updated in place, so
//! established connections never notice an endpoint change.

pub mod addresses;
pub mod balancer;
pub mod forward;
mod shutdown;
pub mod table;
pub mod tcp;
pub mod udp;
pub mod watch;

use crate::kube::client::ApiClient;
use addresses::{Addresses, IpCommand};
use balancer::Balancer;
use smol::{Executor, Task};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use table::{Frontend, Protocol, Service, Slice, Table};
use watch::{Kind, Update};

/// How often a frontend that could not listen (its port taken) is tried again.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// `--proxy-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Userspace,
    None,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "userspace" => Ok(Mode::Userspace),
            "none" | "" => Ok(Mode::None),
            other => Err(format!(
                "--proxy-mode {:?}: must be userspace or none (tinylet has no iptables, ipvs or nftables mode)",
                other
            )),
        }
    }
}

pub struct Settings {
    /// For `trafficPolicy: Local`.
    pub node_name: String,
    /// False: buffered copies instead of splice(2) (`TINYLET_PROXY_SPLICE=0`, for comparison).
    pub splice: bool,
    /// TCP threads (tcp.rs) and executor threads (UDP).
    pub threads: usize,
}

/// What every frontend shares.
pub struct Shared {
    pub executor: &'static Executor<'static>,
    /// The TCP thread (tcp.rs), which serves every TCP frontend.
    pub tcp: tcp::Handle,
}

/// Starts the proxy's threads; returns once they run (the proxy then lives as long as the
/// process). Service addresses it added are removed at SIGTERM/SIGINT.
pub fn start(client: Arc<ApiClient>, settings: Settings) -> Result<(), String> {
    raise_fd_limit();
    // One executor for the process's life: leaked so tasks may borrow it for 'static.
    let executor: &'static Executor<'static> = Box::leak(Box::new(Executor::new()));
    for i in 0..settings.threads.max(1) {
        std::thread::Builder::new()
            .name(format!("proxy-io-{}", i))
            .spawn(move || smol::block_on(executor.run(smol::future::pending::<()>())))
            .map_err(|e| format!("starting the proxy's threads: {}", e))?;
    }
    let tcp = tcp::start(settings.threads, settings.splice)
        .map_err(|e| format!("starting the proxy's TCP thread: {}", e))?;
    let shared = Arc::new(Shared { executor, tcp });
    let addresses = Arc::new(Mutex::new(Addresses::new(IpCommand)));
    shutdown::on_signal({
        let addresses = addresses.clone();
        move || lock(&addresses).clear()
    })?;
    let (tables_tx, tables_rx) =
        smol::channel::unbounded::<(Arc<Table>, std::sync::mpsc::Sender<()>)>();
    executor
        .spawn(reconcile(tables_rx, shared.clone()))
        .detach();
    let (tx, rx) = channel();
    watch::start(client.clone(), Kind::Services, tx.clone())?;
    watch::start(client, Kind::EndpointSlices, tx)?;
    let node = settings.node_name;
    std::thread::Builder::new()
        .name("proxy-sync".into())
        .spawn(move || sync(rx, node, addresses, tables_tx))
        .map_err(|e| format!("starting the proxy: {}", e))?;
    log::info!(
        "proxy: userspace mode, service addresses on {} (label {}), {} forwarding",
        addresses::DEVICE,
        addresses::LABEL,
        if settings.splice {
            "splice(2)"
        } else {
            "buffered"
        }
    );
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Key = (String, String);

/// Keeps the objects, rebuilds the table after each batch of updates, adds addresses before
/// the listeners bind and removes them after the listeners closed.
fn sync(
    rx: Receiver<Update>,
    node: String,
    addresses: Arc<Mutex<Addresses<IpCommand>>>,
    tables: smol::channel::Sender<(Arc<Table>, std::sync::mpsc::Sender<()>)>,
) {
    let mut services: BTreeMap<Key, Service> = BTreeMap::new();
    let mut slices: BTreeMap<Key, Slice> = BTreeMap::new();
    let (mut have_services, mut have_slices) = (false, false);
    let mut last = Table::default();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(u) = next {
            match &u {
                Update::Reset(Kind::Services, _) => have_services = true,
                Update::Reset(Kind::EndpointSlices, _) => have_slices = true,
                _ => {}
            }
            apply(u, &mut services, &mut slices);
            next = rx.try_recv().ok();
        }
        // Until both lists are in, a service would look endpoint-less.
        if !(have_services && have_slices) {
            continue;
        }
        let table = table::build(services.values(), slices.values(), &node);
        if table == last {
            continue;
        }
        lock(&addresses).add_missing(&table.addresses);
        let (done_tx, done_rx) = channel();
        if tables
            .send_blocking((Arc::new(table.clone()), done_tx))
            .is_err()
        {
            return;
        }
        let _ = done_rx.recv_timeout(Duration::from_secs(5));
        lock(&addresses).remove_unwanted(&table.addresses);
        log::debug!(
            "proxy: table: {} frontends, {} addresses",
            table.frontends.len(),
            table.addresses.len()
        );
        last = table;
    }
}

fn apply(u: Update, services: &mut BTreeMap<Key, Service>, slices: &mut BTreeMap<Key, Slice>) {
    let key = |v: &serde_json::Value| -> Key {
        let m = &v["metadata"];
        (
            m["namespace"].as_str().unwrap_or_default().to_string(),
            m["name"].as_str().unwrap_or_default().to_string(),
        )
    };
    match u {
        Update::Reset(Kind::Services, items) => {
            services.clear();
            for v in items {
                upsert_service(services, key(&v), &v);
            }
        }
        Update::Reset(Kind::EndpointSlices, items) => {
            slices.clear();
            for v in items {
                upsert_slice(slices, key(&v), &v);
            }
        }
        Update::Upsert(Kind::Services, v) => upsert_service(services, key(&v), &v),
        Update::Upsert(Kind::EndpointSlices, v) => upsert_slice(slices, key(&v), &v),
        Update::Delete(Kind::Services, v) => {
            services.remove(&key(&v));
        }
        Update::Delete(Kind::EndpointSlices, v) => {
            slices.remove(&key(&v));
        }
    }
}

fn upsert_service(services: &mut BTreeMap<Key, Service>, key: Key, v: &serde_json::Value) {
    match table::parse_service(v) {
        Ok(Some(s)) => {
            services.insert(key, s);
        }
        Ok(None) => {
            services.remove(&key);
        }
        Err(e) => {
            log::warn!("proxy: ignoring {}", e);
            services.remove(&key);
        }
    }
}

fn upsert_slice(slices: &mut BTreeMap<Key, Slice>, key: Key, v: &serde_json::Value) {
    match table::parse_slice(v) {
        Ok(Some(s)) => {
            slices.insert(key, s);
        }
        Ok(None) => {
            slices.remove(&key);
        }
        Err(e) => {
            log::warn!("proxy: ignoring {}", e);
            slices.remove(&key);
        }
    }
}

/// A frontend being served; dropping it closes the frontend.
enum Serving {
    Tcp(#[allow(dead_code)] tcp::Listening),
    Udp(#[allow(dead_code)] Task<()>),
}

/// Applies each table: balancers updated in place, listeners opened and closed.
async fn reconcile(
    tables: smol::channel::Receiver<(Arc<Table>, std::sync::mpsc::Sender<()>)>,
    shared: Arc<Shared>,
) {
    let mut balancers: HashMap<String, Arc<Balancer>> = HashMap::new();
    let mut listeners: HashMap<Frontend, (String, Serving)> = HashMap::new();
    let mut current: Option<Arc<Table>> = None;
    // Frontends that could not listen: retried every second, reported once.
    let mut failed: HashSet<Frontend> = HashSet::new();
    loop {
        let next = if failed.is_empty() {
            tables.recv().await.ok().map(Some)
        } else {
            smol::future::or(async { tables.recv().await.ok().map(Some) }, async {
                smol::Timer::after(LISTEN_RETRY).await;
                Some(None)
            })
            .await
        };
        let (table, done) = match next {
            None => return,
            Some(Some((t, d))) => (t, Some(d)),
            Some(None) => match &current {
                Some(t) => (t.clone(), None),
                None => continue,
            },
        };
        failed.retain(|f| table.frontends.contains_key(f));
        balancers.retain(|name, _| table.frontends.values().any(|sp| &sp.name == name));
        for sp in table.frontends.values() {
            match balancers.get(&sp.name) {
                Some(b) => b.update(sp),
                None => {
                    balancers.insert(sp.name.clone(), Arc::new(Balancer::new(sp)));
                }
            }
        }
        // A frontend that is gone, or now belongs to another service port, is closed.
        listeners.retain(|f, (name, _)| table.frontends.get(f).is_some_and(|sp| &sp.name == name));
        for (f, sp) in &table.frontends {
            if listeners.contains_key(f) {
                continue;
            }
            let Some(b) = balancers.get(&sp.name).cloned() else {
                continue;
            };
            let task = match f.protocol {
                Protocol::Tcp => tcp::bind(f.addr).map(|l| Serving::Tcp(shared.tcp.serve(l, b))),
                Protocol::Udp => udp::listen(f.addr)
                    .map(|s| Serving::Udp(shared.executor.spawn(udp::serve(s, b, shared.clone())))),
            };
            match task {
                Ok(t) => {
                    log::info!("proxy: {} {:?} {}", sp.name, f.protocol, f.addr);
                    failed.remove(f);
                    listeners.insert(*f, (sp.name.clone(), t));
                }
                // Retried every second; the service is named for the operator, once.
                Err(e) if failed.insert(*f) => log::error!(
                    "proxy: {}: cannot listen on {:?} {}: {}; retrying every {:?}",
                    sp.name,
                    f.protocol,
                    f.addr,
                    e,
                    LISTEN_RETRY
                ),
                Err(_) => {}
            }
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
        current = Some(table);
    }
}

/// Raises the soft descriptor limit to the hard one (and the hard one to 65536 where it is
/// lower and the agent may), as the userspace kube-proxy did: every proxied connection holds
/// two descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const WANT: u64 = 65536;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let new_hard = if hard < WANT && setrlimit(Resource::RLIMIT_NOFILE, WANT, WANT).is_ok() {
        WANT
    } else {
        hard
    };
    if soft < new_hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, new_hard, new_hard) {
            log::warn!("proxy: raising the open-file limit from {}: {}", soft, e);
            return;
        }
    }
    log::debug!("proxy: open-file limit {} (was {})", new_hard, soft);
}

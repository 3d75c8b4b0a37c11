//! LIST+WATCH of Services and EndpointSlices for the proxy, one thread each, with kube-proxy's
//! label selector (no `service.kubernetes.io/service-proxy-name`: another proxy's; no
//! `service.kubernetes.io/headless`: nothing to proxy). As the pod source does: LIST, then
//! WATCH from its resourceVersion with bookmarks; a watch the server ends is opened again from
//! the last resourceVersion; a 410 or a broken connection means LIST again, after a back-off of
//! 800 ms doubling to 30 s. Each LIST is sent whole (`Reset`), so the consumer drops whatever
//! vanished while the watch was down.

use crate::kube::client::{escape, resource_version, ApiClient, ApiError};
use serde_json::Value;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

const SELECTOR: &str = "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Services,
    EndpointSlices,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Services => "/api/v1/services",
            Kind::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
        }
    }
}

#[derive(Debug)]
pub enum Update {
    /// Everything there is (a LIST).
    Reset(Kind, Vec<Value>),
    Upsert(Kind, Value),
    Delete(Kind, Value),
}

pub fn start(client: Arc<ApiClient>, kind: Kind, tx: Sender<Update>) -> Result<(), String> {
    std::thread::Builder::new()
        .name(format!("proxy-watch-{:?}", kind).to_lowercase())
        .spawn(move || Reflector { client, kind, tx }.run())
        .map(|_| ())
        .map_err(|e| format!("starting the proxy's {:?} watch: {}", kind, e))
}

struct Reflector {
    client: Arc<ApiClient>,
    kind: Kind,
    tx: Sender<Update>,
}

/// The watch ended; `Stop`: nobody listens any more.
enum End {
    Closed,
    Stop,
}

impl Reflector {
    fn run(self) {
        let mut delay = Backoff::default();
        loop {
            let mut rv = match self.list() {
                Ok(Some(rv)) => rv,
                Ok(None) => return,
                Err(e) => {
                    let d = delay.failed();
                    log::warn!("proxy: listing {:?}: {}; retrying in {:?}", self.kind, e, d);
                    std::thread::sleep(d);
                    continue;
                }
            };
            delay.reset();
            loop {
                match self.watch(&mut rv) {
                    Ok(End::Stop) => return,
                    Ok(End::Closed) => delay.reset(),
                    Err(e) if e.is_expired() => {
                        log::info!("proxy: {:?} watch: {}; listing again", self.kind, e);
                        break;
                    }
                    Err(e) => {
                        let d = delay.failed();
                        log::warn!(
                            "proxy: watching {:?}: {}; listing again in {:?}",
                            self.kind,
                            e,
                            d
                        );
                        std::thread::sleep(d);
                        break;
                    }
                }
            }
        }
    }

    /// The list's resourceVersion; `None` when nobody listens any more.
    fn list(&self) -> Result<Option<String>, ApiError> {
        let mut list = self.client.get(&format!(
            "{}?labelSelector={}",
            self.kind.path(),
            escape(SELECTOR)
        ))?;
        let rv = resource_version(&list).unwrap_or_default().to_string();
        let items = match list["items"].take() {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
        log::debug!(
            "proxy: {} {:?} (resourceVersion {})",
            items.len(),
            self.kind,
            rv
        );
        Ok(self
            .tx
            .send(Update::Reset(self.kind, items))
            .ok()
            .map(|_| rv))
    }

    fn watch(&self, rv: &mut String) -> Result<End, ApiError> {
        let timeout = 300
            + crate::fsutil::random_hex(2)
                .ok()
                .and_then(|h| u64::from_str_radix(&h, 16).ok())
                .unwrap_or(0)
                % 300;
        let path = format!(
            "{}?labelSelector={}&watch=true&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={}",
            self.kind.path(),
            escape(SELECTOR),
            escape(rv),
            timeout
        );
        let mut stream = self
            .client
            .watch(&path, Duration::from_secs(timeout + 60))?;
        loop {
            let Some(ev) = stream.next_event()? else {
                return Ok(End::Closed);
            };
            if let Some(v) = resource_version(&ev.object) {
                *rv = v.to_string();
            }
            let update = match ev.kind.as_str() {
                "ADDED" | "MODIFIED" => Update::Upsert(self.kind, ev.object),
                "DELETED" => Update::Delete(self.kind, ev.object),
                _ => continue, // BOOKMARK: only its resourceVersion matters
            };
            if self.tx.send(update).is_err() {
                return Ok(End::Stop);
            }
        }
    }
}

/// 800 ms doubling to 30 s, as the pod source's.
#[derive(Default)]
struct Backoff {
    next: Option<Duration>,
}

impl Backoff {
    fn failed(&mut self) -> Duration {
        let d = self.next.unwrap_or(Duration::from_millis(800));
        self.next = Some((d * 2).min(Duration::from_secs(30)));
        d
    }

    fn reset(&mut self) {
        self.next = None;
    }
}

//! LIST+WATCH of Services and EndpointSlices for the proxy, one thread each, with kube-proxy's
//! label selector (no `service.kubernetes.io/service-proxy-name`: another proxy's; no
//! `service.kubernetes.io/headless`: nothing to proxy), through the loop the pod source uses
//! (kube/list_watch.rs). Each LIST is sent whole (`Reset`), so the consumer drops whatever
//! vanished while the watch was down.

use crate::kube::client::{escape, ApiClient, ApiError};
use crate::kube::list_watch::{self, Change, Flow, Handler};
use serde_json::Value;
use std::sync::mpsc::Sender;
use std::sync::Arc;

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
        .spawn(move || Reflector { kind, tx }.run(client))
        .map(|_| ())
        .map_err(|e| format!("starting the proxy's {:?} watch: {}", kind, e))
}

struct Reflector {
    kind: Kind,
    tx: Sender<Update>,
}

impl Reflector {
    fn run(mut self, client: Arc<ApiClient>) {
        let what = format!("the proxy's {:?}", self.kind);
        let path = format!("{}?labelSelector={}", self.kind.path(), escape(SELECTOR));
        list_watch::run(&*client, &what, &path, &mut self);
    }

    fn send(&self, update: Update) -> Flow {
        match self.tx.send(update) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }
}

impl Handler for Reflector {
    fn listed(&mut self, items: Option<Vec<Value>>, rv: &str) -> Result<Flow, ApiError> {
        // An answer without an items array is not "no Services": taken as one, it would drop
        // every route of the node. Refused, it is a failed LIST (the routes stay, the loop
        // backs off and lists again), as the pod source refuses it.
        let Some(items) = items else {
            return Err(ApiError::Decode(format!(
                "the {:?} LIST answer is not a list (no items array)",
                self.kind
            )));
        };
        log::debug!(
            "proxy: {} {:?} (resourceVersion {})",
            items.len(),
            self.kind,
            rv
        );
        Ok(self.send(Update::Reset(self.kind, items)))
    }

    fn changed(&mut self, change: Change) -> Flow {
        self.send(match change {
            Change::Upsert(object) => Update::Upsert(self.kind, object),
            Change::Delete(object) => Update::Delete(self.kind, object),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_without_items_is_refused_and_keeps_the_routes() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut r = Reflector {
            kind: Kind::Services,
            tx,
        };
        assert!(r.listed(None, "5").is_err());
        assert!(
            rx.try_recv().is_err(),
            "a Reset was sent for a LIST without items"
        );
        let service = json!({"metadata": {"name": "a"}});
        assert!(matches!(
            r.listed(Some(vec![service]), "6"),
            Ok(Flow::Continue)
        ));
        assert!(matches!(rx.try_recv(), Ok(Update::Reset(Kind::Services, v)) if v.len() == 1));
    }
}

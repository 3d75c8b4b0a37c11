//! The LIST+WATCH loop of client-go's reflector, once for every watcher of the API (the pod
//! source, the proxy's Services and EndpointSlices). The loop owns the mechanics; what a LIST
//! or a change means stays with its caller, a `Handler`.
//!
//! LIST, then WATCH from the list's resourceVersion with bookmarks (which only move the
//! resourceVersion on). A watch the server ends cleanly (its timeoutSeconds, 5–10 minutes,
//! random so the watches of many nodes do not all end together) is opened again from the last
//! resourceVersion seen. A 410 (the resourceVersion is too old to watch from, as an HTTP status
//! or as an ERROR event) means LIST again at once; any other failure means LIST again after a
//! back-off of 800 ms doubling to 30 s, so that one fresh LIST reconciles whatever changed while
//! the server was out of reach. In steady state the only request is one long watch.

use super::client::{escape, resource_version, ApiClient, ApiError, WatchStream};
use serde_json::Value;
use std::time::Duration;

/// Exponential back-off for API errors: 800 ms doubling to 30 s, as client-go's reflector.
pub struct RetryDelay {
    next: Duration,
}

impl Default for RetryDelay {
    fn default() -> Self {
        RetryDelay {
            next: Duration::from_millis(800),
        }
    }
}

impl RetryDelay {
    pub fn failed(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        d
    }
    pub fn reset(&mut self) {
        *self = RetryDelay::default();
    }
}

/// Whether the loop goes on after a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Nobody listens any more (the agent is shutting down): the loop returns.
    Stop,
}

/// One change a watch reported (bookmarks never reach the handler).
#[derive(Debug)]
pub enum Change {
    /// ADDED or MODIFIED: the object as it is now.
    Upsert(Value),
    /// DELETED: the object as it was last.
    Delete(Value),
}

/// What a watcher does with what the API server shows.
pub trait Handler {
    /// Everything there is, from a LIST. `items` is `None` when the answer has no `items` array
    /// (not a List at all): the handler decides whether that is an error. An error counts as a
    /// failed LIST (back-off, `list_failed`, LIST again).
    fn listed(
        &mut self,
        items: Option<Vec<Value>>,
        resource_version: &str,
    ) -> Result<Flow, ApiError>;

    /// One change from the watch.
    fn changed(&mut self, change: Change) -> Flow;

    /// The LIST failed and is tried again after the back-off (the handler's chance to act on
    /// being cut off).
    fn list_failed(&mut self, _error: &ApiError) -> Flow {
        Flow::Continue
    }

    /// The server ended a watch cleanly and the loop is about to open the next one (a watcher
    /// whose object nobody needs any more stops here).
    fn rewatch(&mut self) -> Flow {
        Flow::Continue
    }
}

/// The requests the loop makes, and its waits: the API client, or a script in the tests.
pub trait Api {
    fn list(&self, path: &str) -> Result<Value, ApiError>;
    fn watch(&self, path: &str, idle: Duration) -> Result<WatchStream, ApiError>;
    fn wait(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

impl Api for ApiClient {
    fn list(&self, path: &str) -> Result<Value, ApiError> {
        self.get(path)
    }
    fn watch(&self, path: &str, idle: Duration) -> Result<WatchStream, ApiError> {
        ApiClient::watch(self, path, idle)
    }
}

/// How a watch ended without an error.
enum End {
    /// The server closed it (its timeoutSeconds): watch again from the last resourceVersion.
    Closed,
    Stop,
}

/// Runs LIST+WATCH of `path` (a collection with its selector query) until a hook says `Stop`.
/// `what` names the collection in log lines ("this node's pods").
pub fn run(api: &(impl Api + ?Sized), what: &str, path: &str, handler: &mut impl Handler) {
    let mut delay = RetryDelay::default();
    loop {
        let mut rv = match list(api, path, handler) {
            Ok((Flow::Continue, rv)) => {
                delay.reset();
                rv
            }
            Ok((Flow::Stop, _)) => return,
            Err(e) => {
                let d = delay.failed();
                if handler.list_failed(&e) == Flow::Stop {
                    return;
                }
                log::warn!("listing {}: {}; retrying in {:?}", what, e, d);
                api.wait(d);
                continue;
            }
        };
        loop {
            match watch(api, path, &mut rv, handler) {
                Ok(End::Stop) => return,
                // The server's timeout: watch again from `rv` (the delay is still reset, as
                // every watch follows a LIST that answered).
                Ok(End::Closed) => {
                    if handler.rewatch() == Flow::Stop {
                        return;
                    }
                }
                Err(e) if e.is_expired() => {
                    log::info!("watch of {}: {}; listing again", what, e);
                    break;
                }
                Err(e) => {
                    let d = delay.failed();
                    log::warn!("watching {}: {}; listing again in {:?}", what, e, d);
                    api.wait(d);
                    break;
                }
            }
        }
    }
}

/// Hands the list's items to the handler; with the list's resourceVersion.
fn list(
    api: &(impl Api + ?Sized),
    path: &str,
    handler: &mut impl Handler,
) -> Result<(Flow, String), ApiError> {
    let mut list = api.list(path)?;
    let rv = resource_version(&list).unwrap_or_default().to_string();
    // get_mut, not indexing: the answer may be any JSON.
    let items = match list.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => Some(items),
        _ => None,
    };
    Ok((handler.listed(items, &rv)?, rv))
}

/// One watch, read to its end; `rv` follows every event (bookmarks included).
fn watch(
    api: &(impl Api + ?Sized),
    path: &str,
    rv: &mut String,
    handler: &mut impl Handler,
) -> Result<End, ApiError> {
    let timeout = 300 + random_below(300);
    let mut stream = api.watch(
        &watch_path(path, rv, timeout),
        Duration::from_secs(timeout + 60),
    )?;
    loop {
        let Some(ev) = stream.next_event()? else {
            return Ok(End::Closed);
        };
        if let Some(v) = resource_version(&ev.object) {
            *rv = v.to_string();
        }
        let change = match ev.kind.as_str() {
            "ADDED" | "MODIFIED" => Change::Upsert(ev.object),
            "DELETED" => Change::Delete(ev.object),
            "BOOKMARK" => continue, // only its resourceVersion matters
            kind => {
                log::debug!("watch: ignoring a {:?} event", kind);
                continue;
            }
        };
        if handler.changed(change) == Flow::Stop {
            return Ok(End::Stop);
        }
    }
}

/// The watch request for the collection at `path`, from `rv`.
fn watch_path(path: &str, rv: &str, timeout: u64) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!(
        "{}{}watch=true&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={}",
        path,
        sep,
        escape(rv),
        timeout
    )
}

fn random_below(n: u64) -> u64 {
    let r = crate::fsutil::random_hex(8)
        .ok()
        .and_then(|h| u64::from_str_radix(&h, 16).ok())
        .unwrap_or(0);
    r % n.max(1)
}

#[cfg(test)]
#[path = "list_watch_tests.rs"]
mod tests;

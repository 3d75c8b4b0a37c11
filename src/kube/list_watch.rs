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
                Ok(End::Closed) => {}
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
mod tests {
    use super::*;
    use serde_json::json;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    /// A scripted API server: LIST and WATCH answers are taken in order; every request and wait
    /// is recorded. When the LIST script runs out, LIST fails with "script over".
    #[derive(Default)]
    struct Script {
        lists: RefCell<VecDeque<Result<Value, ApiError>>>,
        /// The body of each watch (newline-separated events), or its error.
        watches: RefCell<VecDeque<Result<String, ApiError>>>,
        calls: RefCell<Vec<String>>,
    }

    impl Script {
        fn list(self, answer: Result<Value, ApiError>) -> Self {
            self.lists.borrow_mut().push_back(answer);
            self
        }
        fn watch(self, answer: Result<Vec<Value>, ApiError>) -> Self {
            let body = answer.map(|events| {
                events
                    .iter()
                    .map(|e| format!("{}\n", e))
                    .collect::<String>()
            });
            self.watches.borrow_mut().push_back(body);
            self
        }
        fn watch_raw(self, body: &str) -> Self {
            self.watches.borrow_mut().push_back(Ok(body.to_string()));
            self
        }
        fn calls(&self) -> Vec<String> {
            self.calls.borrow().clone()
        }
    }

    impl Api for Script {
        fn list(&self, path: &str) -> Result<Value, ApiError> {
            self.calls.borrow_mut().push(format!("LIST {}", path));
            self.lists
                .borrow_mut()
                .pop_front()
                .unwrap_or_else(|| Err(ApiError::Transport("script over".into())))
        }
        fn watch(&self, path: &str, _idle: Duration) -> Result<WatchStream, ApiError> {
            // The timeout is random: record the rest of the query.
            let (kept, timeout) = path.rsplit_once("&timeoutSeconds=").unwrap();
            let t: u64 = timeout.parse().unwrap();
            assert!((300..600).contains(&t), "{}", path);
            self.calls.borrow_mut().push(format!("WATCH {}", kept));
            let body = self
                .watches
                .borrow_mut()
                .pop_front()
                .unwrap_or_else(|| Ok(String::new()))?;
            Ok(WatchStream::from_reader(std::io::Cursor::new(body)))
        }
        fn wait(&self, d: Duration) {
            self.calls.borrow_mut().push(format!("WAIT {:?}", d));
        }
    }

    /// Records what it is handed; stops at the end of the LIST script.
    #[derive(Default)]
    struct Recorder {
        seen: Vec<String>,
        /// Stop after this many changes.
        stop_after: Option<usize>,
        /// Refuse an answer without `items`, as the pod source does.
        strict: bool,
    }

    impl Handler for Recorder {
        fn listed(&mut self, items: Option<Vec<Value>>, rv: &str) -> Result<Flow, ApiError> {
            if self.strict && items.is_none() {
                return Err(ApiError::Decode("not a List".into()));
            }
            let names: Vec<String> = items
                .unwrap_or_default()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap_or("?").to_string())
                .collect();
            self.seen
                .push(format!("listed [{}] at {}", names.join(","), rv));
            Ok(Flow::Continue)
        }
        fn changed(&mut self, change: Change) -> Flow {
            let (what, o) = match change {
                Change::Upsert(o) => ("upsert", o),
                Change::Delete(o) => ("delete", o),
            };
            self.seen.push(format!(
                "{} {}",
                what,
                o["metadata"]["name"].as_str().unwrap_or("?")
            ));
            let changes = self
                .seen
                .iter()
                .filter(|s| !s.starts_with("listed"))
                .count();
            match self.stop_after {
                Some(n) if changes >= n => Flow::Stop,
                _ => Flow::Continue,
            }
        }
        fn list_failed(&mut self, e: &ApiError) -> Flow {
            self.seen.push(format!("list failed: {}", e));
            if e.to_string().contains("script over") {
                Flow::Stop
            } else {
                Flow::Continue
            }
        }
    }

    const PATH: &str = "/api/v1/pods?fieldSelector=x";

    fn list(rv: &str, names: &[&str]) -> Result<Value, ApiError> {
        let items: Vec<Value> = names
            .iter()
            .map(|n| json!({"metadata": {"name": n}}))
            .collect();
        Ok(json!({"kind": "List", "metadata": {"resourceVersion": rv}, "items": items}))
    }

    fn event(kind: &str, name: &str, rv: &str) -> Value {
        json!({"type": kind, "object": {"metadata": {"name": name, "resourceVersion": rv}}})
    }

    fn gone() -> ApiError {
        ApiError::Status {
            code: 410,
            reason: "Expired".into(),
            message: "too old resource version".into(),
        }
    }

    fn watch_from(rv: &str) -> String {
        format!(
            "WATCH {}&watch=true&resourceVersion={}&allowWatchBookmarks=true",
            PATH, rv
        )
    }

    fn run_script(script: &Script, handler: &mut Recorder) {
        run(script, "test objects", PATH, handler);
    }

    #[test]
    fn events_move_the_resource_version_and_bookmarks_reach_no_handler() {
        let script = Script::default()
            .list(list("10", &["a"]))
            .watch(Ok(vec![
                event("ADDED", "b", "11"),
                event("MODIFIED", "a", "12"),
                json!({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}}),
            ]))
            .watch(Ok(vec![
                event("DELETED", "b", "21"),
                json!({"type": "SOMETHING", "object": {"metadata": {"resourceVersion": "22"}}}),
            ]))
            .watch(Ok(vec![event("ADDED", "c", "23")]));
        let mut h = Recorder {
            stop_after: Some(4),
            ..Default::default()
        };
        run_script(&script, &mut h);
        assert_eq!(
            h.seen,
            [
                "listed [a] at 10",
                "upsert b",
                "upsert a",
                "delete b",
                "upsert c"
            ]
        );
        // A watch the server closed is opened again from the last resourceVersion seen (the
        // bookmark's, then an unknown event's), with no LIST and no wait.
        assert_eq!(
            script.calls(),
            [
                format!("LIST {}", PATH),
                watch_from("10"),
                watch_from("20"),
                watch_from("22"),
            ]
        );
    }

    #[test]
    fn gone_lists_again_at_once_as_status_or_as_error_event() {
        let script = Script::default()
            .list(list("10", &["a"]))
            .watch(Err(gone()))
            .list(list("30", &["a", "b"]))
            .watch(Ok(vec![
                event("ADDED", "c", "31"),
                json!({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}),
                event("ADDED", "never", "99"),
            ]))
            .list(list("40", &[]))
            .watch(Ok(vec![event("ADDED", "d", "41")]));
        let mut h = Recorder {
            stop_after: Some(2),
            ..Default::default()
        };
        run_script(&script, &mut h);
        assert_eq!(
            h.seen,
            [
                "listed [a] at 10",
                "listed [a,b] at 30",
                "upsert c",
                "listed [] at 40",
                "upsert d"
            ]
        );
        let calls = script.calls();
        assert!(!calls.iter().any(|c| c.starts_with("WAIT")), "{:?}", calls);
        assert_eq!(
            calls,
            [
                format!("LIST {}", PATH),
                watch_from("10"),
                format!("LIST {}", PATH),
                watch_from("30"),
                format!("LIST {}", PATH),
                watch_from("40"),
            ]
        );
    }

    #[test]
    fn failures_back_off_then_list_afresh() {
        let refused = || ApiError::Transport("connection refused".into());
        let script = Script::default()
            .list(Err(refused()))
            .list(Err(refused()))
            .list(list("10", &[]))
            // A broken stream, then a LIST that fails again: the delay goes on doubling.
            .watch(Err(refused()))
            .list(Err(refused()))
            .list(list("11", &[]))
            // A line that is not a JSON object is a failed watch too.
            .watch_raw("1\n")
            .list(list("12", &[]))
            .watch(Ok(vec![]))
            .watch(Err(ApiError::Status {
                code: 500,
                reason: "InternalError".into(),
                message: String::new(),
            }));
        let mut h = Recorder::default();
        run_script(&script, &mut h);
        let waits: Vec<String> = script
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("WAIT"))
            .collect();
        // 800 ms doubling; a LIST that answers resets it.
        assert_eq!(
            waits,
            [
                "WAIT 800ms",
                "WAIT 1.6s",
                "WAIT 800ms",
                "WAIT 1.6s",
                "WAIT 800ms",
                "WAIT 800ms"
            ]
        );
        // Every failure is followed by a LIST, never by a watch from the old resourceVersion.
        let calls = script.calls();
        for (i, c) in calls.iter().enumerate() {
            if c.starts_with("WAIT") {
                assert!(calls[i + 1].starts_with("LIST"), "{:?}", calls);
            }
        }
        assert_eq!(
            h.seen
                .iter()
                .filter(|s| s.starts_with("list failed"))
                .count(),
            4,
            "{:?}",
            h.seen
        );
    }

    #[test]
    fn the_delay_doubles_to_thirty_seconds() {
        let mut d = RetryDelay::default();
        let seen: Vec<u64> = (0..8).map(|_| d.failed().as_millis() as u64).collect();
        assert_eq!(seen, [800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        d.reset();
        assert_eq!(d.failed(), Duration::from_millis(800));
    }

    #[test]
    fn a_refused_list_is_a_failed_list() {
        let script = Script::default()
            .list(Ok(json!({})))
            .list(list("5", &["a"]))
            .watch(Ok(vec![event("ADDED", "b", "6")]));
        let mut h = Recorder {
            stop_after: Some(1),
            strict: true,
            ..Default::default()
        };
        run_script(&script, &mut h);
        assert_eq!(
            h.seen,
            [
                "list failed: unreadable answer from the API server: not a List",
                "listed [a] at 5",
                "upsert b"
            ]
        );
        assert_eq!(script.calls()[1], "WAIT 800ms");
    }

    #[test]
    fn watch_paths_keep_the_selector() {
        assert_eq!(
            watch_path("/api/v1/services?labelSelector=a", "7", 300),
            "/api/v1/services?labelSelector=a&watch=true&resourceVersion=7&allowWatchBookmarks=true&timeoutSeconds=300"
        );
        assert_eq!(
            watch_path("/api/v1/pods", "", 301),
            "/api/v1/pods?watch=true&resourceVersion=&allowWatchBookmarks=true&timeoutSeconds=301"
        );
    }
}

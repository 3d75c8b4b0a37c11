//! Tests of list_watch.rs against a scripted API server: the requests the loop makes, its waits,
//! and what reaches the handler.

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

impl Recorder {
    fn stopping_after(changes: usize) -> Recorder {
        Recorder {
            stop_after: Some(changes),
            ..Default::default()
        }
    }
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

/// Runs the loop over `script`; what the handler was handed.
fn run_script(script: &Script, mut handler: Recorder) -> Vec<String> {
    run(script, "test objects", PATH, &mut handler);
    handler.seen
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
    let seen = run_script(&script, Recorder::stopping_after(4));
    assert_eq!(
        seen,
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
    let seen = run_script(&script, Recorder::stopping_after(2));
    assert_eq!(
        seen,
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
    let seen = run_script(&script, Recorder::default());
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
        seen.iter().filter(|s| s.starts_with("list failed")).count(),
        4,
        "{:?}",
        seen
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
    let seen = run_script(
        &script,
        Recorder {
            stop_after: Some(1),
            strict: true,
            ..Default::default()
        },
    );
    assert_eq!(
        seen,
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

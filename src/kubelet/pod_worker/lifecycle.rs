//! Lifecycle hooks (postStart, preStop: exec, httpGet, sleep) and what a container leaves behind
//! when it exits: its termination message.

use super::*;
use crate::kubelet::prober;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The longest a postStart hook may hold a container in `ContainerCreating`. The kubelet has no
/// bound; a hook that never returns must not stall the pod's worker forever.
const POST_START_LIMIT: Duration = Duration::from_secs(120);

/// The kubelet reads at most this much of a termination message file.
const MAX_MESSAGE_BYTES: u64 = 4096;
/// FallbackToLogsOnError: the last lines of the log, at most this many of them and bytes.
const FALLBACK_LOG_LINES: usize = 80;
const FALLBACK_LOG_BYTES: usize = 2048;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Hook {
    Run(prober::Action),
    Sleep(Duration),
}

/// The `lifecycle.<which>` handler of a container (`which` is postStart or preStop).
pub(super) fn parse_hook(
    container: &serde_json::Value,
    which: &str,
) -> Result<Option<Hook>, String> {
    let h = &container["lifecycle"][which];
    if h.is_null() {
        return Ok(None);
    }
    let field = format!("lifecycle.{}", which);
    if let Some(s) = h.get("sleep") {
        let secs = s["seconds"]
            .as_i64()
            .ok_or_else(|| format!("{}.sleep.seconds: Required value", field))?;
        if secs < 0 {
            return Err(format!(
                "{}.sleep.seconds: Invalid value: must be >= 0",
                field
            ));
        }
        return Ok(Some(Hook::Sleep(Duration::from_secs(secs as u64))));
    }
    if h.get("tcpSocket").is_some() {
        // Deprecated in the API and never implemented by the kubelet's hook runner either.
        return Err(format!(
            "{}.tcpSocket: TCP lifecycle hooks are not supported (use exec, httpGet or sleep)",
            field
        ));
    }
    prober::parse_action(h, container, &field).map(|a| Some(Hook::Run(a)))
}

/// Runs a hook against container `id`, giving up after `limit`. Err says why it failed.
pub(super) fn run_hook(
    hook: &Hook,
    runtime: &crate::runtime::Runtime,
    id: &str,
    dialer: Option<&prober::NetnsDialer>,
    limit: Duration,
) -> Result<(), String> {
    match hook {
        Hook::Sleep(d) => {
            std::thread::sleep((*d).min(limit));
            Ok(())
        }
        Hook::Run(action) => {
            let probe = prober::Probe {
                action: action.clone(),
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(1),
                timeout: limit.max(Duration::from_secs(1)),
                success_threshold: 1,
                failure_threshold: 1,
            };
            let target = prober::Target {
                runtime,
                container_id: id,
                dialer,
            };
            prober::run(&probe, &target)
        }
    }
}

impl PodWorker {
    /// The network namespace dialer for httpGet hooks (made on demand, shared with probes).
    pub(super) fn hook_dialer(&mut self, hook: &Hook) -> Option<&prober::NetnsDialer> {
        if !matches!(hook, Hook::Run(prober::Action::Http { .. })) {
            return None;
        }
        let ns = self.sandbox.as_ref().and_then(|s| s.net.clone())?;
        if self.dialer.as_ref().is_none_or(|d| d.netns() != ns) {
            self.dialer = prober::NetnsDialer::start(&ns)
                .map_err(|e| log::warn!("pod {}: hooks: {}", self.pod.full_name(), e))
                .ok();
        }
        self.dialer.as_ref()
    }

    /// Runs container `i`'s postStart hook, if it has one. On failure the container is killed
    /// (its restart policy decides what follows) and false is returned.
    pub(super) fn post_start(&mut self, i: usize, id: &str) -> bool {
        let hook = match parse_hook(self.container_json(i), "postStart") {
            Ok(Some(h)) => h,
            Ok(None) => return true,
            Err(e) => {
                self.fail_post_start(i, id, e);
                return false;
            }
        };
        let ctx = self.ctx.clone();
        let dialer = self.hook_dialer(&hook);
        match run_hook(&hook, &ctx.runtime, id, dialer, POST_START_LIMIT) {
            Ok(()) => true,
            Err(e) => {
                self.fail_post_start(i, id, e);
                false
            }
        }
    }

    fn fail_post_start(&mut self, i: usize, id: &str, why: String) {
        let name = self.containers[i].name.clone();
        let message = format!("PostStartHook failed: {}", why);
        log::warn!(
            "pod {}: container {}: {}",
            self.pod.full_name(),
            name,
            message
        );
        self.event(Some(&name), "Warning", "FailedPostStartHook", message);
        // The kubelet kills such a container at once; its exit is handled like any other.
        if let Err(e) = self.ctx.runtime.signal(id, "KILL") {
            log::debug!("pod {}: {}", self.pod.full_name(), e);
        }
    }

    /// Runs container `i`'s preStop hook (if any) against its running attempt `id`, within
    /// `limit`. A failure is reported as an event; the container is stopped either way.
    pub(super) fn pre_stop(&mut self, i: usize, id: &str, limit: Duration) {
        let hook = match parse_hook(self.container_json(i), "preStop") {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(e) => return self.failed_pre_stop(i, e),
        };
        let ctx = self.ctx.clone();
        let dialer = self.hook_dialer(&hook);
        if let Err(e) = run_hook(&hook, &ctx.runtime, id, dialer, limit) {
            self.failed_pre_stop(i, e);
        }
    }

    pub(super) fn failed_pre_stop(&self, i: usize, why: String) {
        let name = &self.containers[i].name;
        let message = format!("PreStopHook failed: {}", why);
        log::warn!(
            "pod {}: container {}: {}",
            self.pod.full_name(),
            name,
            message
        );
        self.event(Some(name), "Warning", "FailedPreStopHook", message);
    }

    /// The host file bind-mounted at container `c`'s terminationMessagePath, emptied for the
    /// attempt about to start; None when the container has no such path.
    pub(super) fn termination_log_bind(
        &self,
        c: &Container,
    ) -> Result<Option<(String, PathBuf, bool)>, String> {
        let Some(dest) = c
            .termination_message_path
            .as_deref()
            .filter(|p| !p.is_empty())
        else {
            return Ok(None);
        };
        if !dest.starts_with('/') {
            return Err(format!(
                "terminationMessagePath {:?} must be an absolute path",
                dest
            ));
        }
        let dir = self.dir.join("termination-log");
        fsutil::ensure_dir(&dir).map_err(|e| format!("creating {}: {}", dir.display(), e))?;
        let file = dir.join(&c.name);
        // Writable by whatever user the container runs as, as the kubelet makes it. Emptied in
        // place: no container instance reads it while the next is being made.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o666)
            .open(&file)
            .map_err(|e| format!("creating {}: {}", file.display(), e))?;
        Ok(Some((dest.to_string(), file, false)))
    }

    /// What a container that exited with `exit_code` leaves as its termination message: the
    /// file at its terminationMessagePath, or with FallbackToLogsOnError and an empty file after a
    /// failure, the tail of its log.
    pub(super) fn termination_message(&self, i: usize, exit_code: i32) -> Option<String> {
        let c = self.spec_container(i);
        let file = self.dir.join("termination-log").join(&c.name);
        let mut message = read_head(&file, MAX_MESSAGE_BYTES);
        let fallback = c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        if message.trim().is_empty() && fallback && exit_code != 0 {
            let rec = &self.containers[i];
            message = log_tail(&self.log_path(&c.name, rec.restart_count));
        }
        (!message.is_empty()).then_some(message)
    }
}

fn read_head(file: &Path, limit: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(file) {
        let _ = f.take(limit).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The last lines of a CRI-format container log, as plain text.
fn log_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    // Enough raw bytes for FALLBACK_LOG_BYTES of content even with the CRI prefixes.
    let window = (FALLBACK_LOG_BYTES * 4) as u64;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(window);
    let _ = f.seek(SeekFrom::Start(start));
    let mut raw = Vec::new();
    let _ = f.read_to_end(&mut raw);
    if start > 0 {
        // The window began inside a line: drop that fragment.
        let first = raw
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |n| n + 1);
        raw.drain(..first);
    }
    let mut text = Vec::new();
    crate::runtime::logs::decode(&raw, &mut text);
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(FALLBACK_LOG_LINES)..].join("\n");
    let cut = tail.len().saturating_sub(FALLBACK_LOG_BYTES);
    let cut = (cut..=tail.len())
        .find(|i| tail.is_char_boundary(*i))
        .unwrap_or(tail.len());
    tail[cut..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hooks_parse_and_name_their_field() {
        let c = json!({"ports": [{"name": "web", "containerPort": 8080}], "lifecycle": {
            "postStart": {"exec": {"command": ["sh", "-c", "true"]}},
            "preStop": {"httpGet": {"port": "web", "path": "/quit"}}}});
        assert_eq!(
            parse_hook(&c, "postStart").unwrap(),
            Some(Hook::Run(prober::Action::Exec(vec![
                "sh".into(),
                "-c".into(),
                "true".into()
            ])))
        );
        match parse_hook(&c, "preStop").unwrap() {
            Some(Hook::Run(prober::Action::Http { port, path, .. })) => {
                assert_eq!((port, path.as_str()), (8080, "/quit"))
            }
            other => panic!("{:?}", other),
        }
        let sleep = json!({"lifecycle": {"preStop": {"sleep": {"seconds": 3}}}});
        assert_eq!(
            parse_hook(&sleep, "preStop").unwrap(),
            Some(Hook::Sleep(Duration::from_secs(3)))
        );
        let tcp = json!({"lifecycle": {"preStop": {"tcpSocket": {"port": 80}}}});
        assert!(parse_hook(&tcp, "preStop")
            .unwrap_err()
            .contains("lifecycle.preStop.tcpSocket"));
        let bad = json!({"lifecycle": {"postStart": {"httpGet": {"port": "nope"}}}});
        let e = parse_hook(&bad, "postStart").unwrap_err();
        assert!(e.starts_with("lifecycle.postStart"), "{}", e);
        assert!(e.contains("no container port named \"nope\""), "{}", e);
    }

    #[test]
    fn log_tail_keeps_the_last_lines_as_text() {
        let dir = std::env::temp_dir().join(format!("tinylet-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("0.log");
        let mut raw = String::new();
        for n in 0..200 {
            raw.push_str(&format!(
                "2026-01-01T00:00:00.000000000Z stdout F line {}\n",
                n
            ));
        }
        std::fs::write(&log, raw).unwrap();
        let tail = log_tail(&log);
        assert!(tail.ends_with("line 199"), "{:?}", tail);
        assert_eq!(tail.lines().count(), FALLBACK_LOG_LINES);
        assert!(!tail.contains("stdout F"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

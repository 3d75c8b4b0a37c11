//! The kubelet's crash-loop back-off (client-go flowcontrol.Backoff as the kubelet uses it):
//! the first restart is immediate, then 10 s doubling to 5 min, measured from the moment the
//! container finished; an entry older than 10 min (2 x max) starts over. All times scale by a
//! factor so tests need not wait minutes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    pub initial: f64,
    pub max: f64,
}

impl BackoffPolicy {
    pub fn scaled(scale: f64) -> Self {
        BackoffPolicy {
            initial: 10.0 * scale,
            max: 300.0 * scale,
        }
    }

    /// An entry whose last restart is older than this is forgotten.
    fn expiry(&self) -> f64 {
        2.0 * self.max
    }
}

/// One container's back-off entry, persisted with the container record (unix seconds).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Backoff {
    pub delay: f64,
    pub last_update: f64,
}

impl Backoff {
    /// When a container that finished at `finished` may start again (`None`: right away).
    pub fn restart_at(
        entry: Option<Backoff>,
        policy: &BackoffPolicy,
        finished: f64,
    ) -> Option<f64> {
        let e = entry?;
        if finished - e.last_update > policy.expiry() {
            return None;
        }
        Some(finished + e.delay)
    }

    /// Records a (re)start at `now` and returns the entry to keep.
    pub fn next(entry: Option<Backoff>, policy: &BackoffPolicy, now: f64) -> Backoff {
        match entry {
            Some(e) if now - e.last_update <= policy.expiry() => Backoff {
                delay: (e.delay * 2.0).min(policy.max),
                last_update: now,
            },
            _ => Backoff {
                delay: policy.initial,
                last_update: now,
            },
        }
    }
}

/// "10s", "1m20s", "5m0s": Go's Duration.String() for whole seconds, as in kubelet messages.
pub fn go_duration(secs: f64) -> String {
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0).round() as u64);
    }
    let s = secs.round() as u64;
    if s < 60 {
        format!("{}s", s)
    } else if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_ten_seconds_to_five_minutes() {
        let p = BackoffPolicy::scaled(1.0);
        let mut entry = None;
        let mut t = 0.0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            // The container runs 1 s, then fails.
            entry = Some(Backoff::next(entry, &p, t));
            t += 1.0;
            let at = Backoff::restart_at(entry, &p, t).unwrap_or(t);
            waits.push(at - t);
            t = at;
        }
        assert_eq!(
            waits,
            vec![10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0, 300.0]
        );
        // First failure ever: immediate restart.
        assert_eq!(Backoff::restart_at(None, &p, 5.0), None);
    }

    #[test]
    fn resets_after_ten_minutes_of_running() {
        let p = BackoffPolicy::scaled(1.0);
        let e = Backoff {
            delay: 160.0,
            last_update: 0.0,
        };
        assert_eq!(Backoff::restart_at(Some(e), &p, 601.0), None);
        assert_eq!(Backoff::next(Some(e), &p, 601.0).delay, 10.0);
        assert_eq!(Backoff::next(Some(e), &p, 100.0).delay, 300.0);
        let fast = BackoffPolicy::scaled(0.1);
        assert_eq!(fast.initial, 1.0);
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(10.0), "10s");
        assert_eq!(go_duration(300.0), "5m0s");
        assert_eq!(go_duration(80.0), "1m20s");
        assert_eq!(go_duration(0.5), "500ms");
    }
}

//! Wall-clock timestamps in the formats Kubernetes uses (RFC 3339, UTC), without a date crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds and nanoseconds since the Unix epoch.
pub fn now_unix() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// `2026-11-27T17:37:14Z`: the precision of metav1.Time in API objects.
pub fn rfc3339(t: Duration) -> String {
    let (date, hms) = civil(t.as_secs());
    format!("{}T{}Z", date, hms)
}

/// `2026-11-27T17:37:14.123456789Z`: the CRI log line timestamp (always 9 fractional digits).
pub fn rfc3339_nano(t: Duration) -> String {
    let (date, hms) = civil(t.as_secs());
    format!("{}T{}.{:09}Z", date, hms, t.subsec_nanos())
}

/// `2026-11-27T17:37:14.123456Z`: metav1.MicroTime (Lease renewTime, Event eventTime).
pub fn rfc3339_micro(t: Duration) -> String {
    let (date, hms) = civil(t.as_secs());
    format!("{}T{}.{:06}Z", date, hms, t.subsec_micros())
}

/// Parses the forms `rfc3339` and `rfc3339_nano` produce (any fraction length, trailing Z).
pub fn parse_rfc3339(s: &str) -> Option<Duration> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = match time.split_once('.') {
        Some((h, f)) => (h, f),
        None => (time, ""),
    };
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let nanos = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().take(9).collect();
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    let days = days_from_civil(y, m, day);
    if days < 0 {
        return None;
    }
    Some(Duration::new(
        days as u64 * 86400 + hh * 3600 + mm * 60 + ss,
        nanos,
    ))
}

fn civil(secs: u64) -> (String, String) {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (
        format!("{:04}-{:02}-{:02}", y, m, d),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(Duration::from_secs(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(Duration::from_secs(1_795_800_000)),
            "2026-11-27T17:20:00Z"
        );
        assert_eq!(
            rfc3339_nano(Duration::new(951_782_400, 5)),
            "2000-02-29T00:00:00.000000005Z"
        );
    }

    #[test]
    fn parse_round_trips() {
        for secs in [0u64, 951_782_400, 1_795_800_000, 4_102_444_800] {
            let t = Duration::new(secs, 123_456_789);
            assert_eq!(parse_rfc3339(&rfc3339_nano(t)), Some(t));
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(Duration::from_secs(secs)));
        }
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}

//! `GET /containerLogs/{namespace}/{pod}/{container}`: a container's log with the kubelet's
//! query options (follow, previous, tailLines, timestamps, sinceSeconds, sinceTime,
//! limitBytes), streamed chunked; `tinylet logs` shares the reading code (cli/logs.rs).

use super::http::Request;
use crate::cli::logs::{self, LogOptions, LogsError, LogsRequest};
use std::path::Path;
use std::time::Duration;

/// The log options of the query, checked as the API server validates PodLogOptions.
pub fn options(req: &Request) -> Result<LogOptions, String> {
    let boolean = |name: &str| -> Result<bool, String> {
        match req.query(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(v) => Err(format!(
                "{}: invalid value {:?}: must be true or false",
                name, v
            )),
        }
    };
    let number = |name: &str, min: i64| -> Result<Option<i64>, String> {
        match req.query(name) {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= min => Ok(Some(n)),
                _ => Err(format!(
                    "{}: Invalid value: {:?}: must be a number, at least {}",
                    name, v, min
                )),
            },
        }
    };
    let since = match (number("sinceSeconds", 1)?, req.query("sinceTime")) {
        (Some(_), Some(_)) => {
            return Err("at most one of sinceTime or sinceSeconds may be specified".into())
        }
        (Some(s), None) => {
            Some(crate::clock::now_unix().saturating_sub(Duration::from_secs(s as u64)))
        }
        (None, Some(t)) => Some(
            crate::clock::parse_rfc3339(t)
                .ok_or_else(|| format!("sinceTime: {:?} is not an RFC 3339 time", t))?,
        ),
        (None, None) => None,
    };
    Ok(LogOptions {
        follow: boolean("follow")?,
        previous: boolean("previous")?,
        tail_lines: number("tailLines", 0)?.map(|n| n as u64),
        timestamps: boolean("timestamps")?,
        since,
        limit_bytes: number("limitBytes", 1)?.map(|n| n as u64),
    })
}

/// Finds the log `rest` (`{namespace}/{pod}/{container}`) names; the error's status and text.
pub fn open(
    root: &Path,
    log_dir: &Path,
    rest: &str,
    options: LogOptions,
) -> Result<logs::LogStream, (u16, String)> {
    let parts: Vec<&str> = rest.split('/').collect();
    let [ns, pod, container] = parts[..] else {
        return Err((
            400,
            "the path must be /containerLogs/{namespace}/{pod}/{container}".into(),
        ));
    };
    if [ns, pod, container].iter().any(|s| s.is_empty()) {
        return Err((400, "namespace, pod and container must not be empty".into()));
    }
    logs::open(&LogsRequest {
        root,
        log_dir,
        namespace: Some(ns),
        pod,
        container: Some(container),
        exact: true,
        options,
    })
    .map_err(|e| match e {
        LogsError::NotFound(m) => (404, m),
        LogsError::Bad(m) => (400, m),
    })
}

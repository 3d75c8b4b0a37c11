//! `tinylet logs [-f] [-p] [-n NS] POD [CONTAINER]`: a container's output, decoded from its CRI
//! log. The node API's `/containerLogs` serves the same code, with the kubelet's options:
//! tailLines, timestamps, sinceSeconds/sinceTime and limitBytes.

use crate::kubelet::store;
use crate::runtime::logs::parse_line;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct LogsRequest<'a> {
    pub root: &'a Path,
    pub log_dir: &'a Path,
    pub namespace: Option<&'a str>,
    pub pod: &'a str,
    pub container: Option<&'a str>,
    /// The pod's exact name only (the API); else `NAME` also finds the static pod `NAME-<node>`.
    pub exact: bool,
    pub options: LogOptions,
}

/// What of the log to show, as the kubelet's PodLogOptions.
#[derive(Debug, Default, Clone)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    /// Start this many CRI lines before the end (as the kubelet counts: a long line's partial
    /// chunks count one each).
    pub tail_lines: Option<u64>,
    /// Prefix each line with its RFC 3339 nanosecond time stamp.
    pub timestamps: bool,
    /// Only lines written at or after this time (seconds since the epoch).
    pub since: Option<Duration>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
}

/// Why logs could not be served: the node API answers 404 for `NotFound`, 400 otherwise.
#[derive(Debug)]
pub enum LogsError {
    NotFound(String),
    Bad(String),
}

impl std::fmt::Display for LogsError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            LogsError::NotFound(m) | LogsError::Bad(m) => f.write_str(m),
        }
    }
}

/// Finds the pod: its full name, or `NAME` for the static pod `NAME-<node>` when that is unique.
fn find_pod(req: &LogsRequest) -> Result<store::StoredPod, LogsError> {
    let pods = store::list_pods(req.root);
    let ns_ok = |p: &store::StoredPod| {
        req.namespace
            .is_none_or(|ns| p.record.object["metadata"]["namespace"] == ns)
    };
    let name_of = |p: &store::StoredPod| {
        p.record.object["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let mut matches: Vec<store::StoredPod> = Vec::new();
    let mut prefixed: Vec<store::StoredPod> = Vec::new();
    for p in pods.into_iter().filter(|p| ns_ok(p)) {
        let name = name_of(&p);
        if name == req.pod {
            matches.push(p);
        } else if !req.exact
            && name
                .strip_prefix(req.pod)
                .is_some_and(|rest| rest.starts_with('-'))
        {
            prefixed.push(p);
        }
    }
    if matches.is_empty() && prefixed.len() == 1 {
        matches = prefixed;
    }
    match matches.len() {
        0 => Err(LogsError::NotFound(format!(
            "pod {:?} not found under {}",
            req.pod,
            req.root.display()
        ))),
        1 => Ok(matches.remove(0)),
        _ => Err(LogsError::Bad(format!(
            "pod name {:?} is ambiguous: give the namespace with -n",
            req.pod
        ))),
    }
}

/// `tinylet logs`: finds the log and copies it to `out`.
pub fn run(req: &LogsRequest, out: &mut impl Write) -> Result<(), String> {
    open(req).map_err(|e| e.to_string())?.copy_to(out)
}

/// A container's log, found and ready to be copied.
pub struct LogStream {
    path: PathBuf,
    /// When following: the pod's directory, the container, the id of the running attempt.
    follow: Option<(PathBuf, String, Option<String>)>,
    options: LogOptions,
}

/// Finds the pod, the container and the log file the request is for.
pub fn open(req: &LogsRequest) -> Result<LogStream, LogsError> {
    let pod = find_pod(req)?;
    let meta = &pod.record.object["metadata"];
    let names_in = |list: &str| -> Vec<String> {
        pod.record.object["spec"][list]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    // As kubectl: the default is the only app container; init containers by name.
    let names = names_in("containers");
    let init_names = names_in("initContainers");
    let pod_name = meta["name"].as_str().unwrap_or("");
    let container = match (req.container, names.len()) {
        (Some(c), _) if names.iter().chain(&init_names).any(|n| n == c) => c.to_string(),
        (Some(c), _) => {
            return Err(LogsError::NotFound(format!(
                "container {} is not valid for pod {}",
                c, pod_name
            )))
        }
        (None, 1) => names[0].clone(),
        (None, _) => {
            return Err(LogsError::Bad(format!(
                "a container name must be specified for pod {}, choose one of: [{}]",
                pod_name,
                names.join(" ")
            )))
        }
    };
    let rec = store::load_container(&pod.dir, &container).ok_or_else(|| {
        LogsError::Bad(format!(
            "container {} of pod {} has not started yet",
            container, pod_name
        ))
    })?;
    let options = req.options.clone();
    let count = if options.previous {
        if !rec.started_once || (rec.restart_count == 0) {
            return Err(LogsError::Bad(format!(
                "previous terminated container {:?} in pod {:?} not found",
                container, pod_name
            )));
        }
        rec.restart_count - 1
    } else {
        rec.restart_count
    };
    let dir = req
        .log_dir
        .join(format!(
            "{}_{}_{}",
            meta["namespace"].as_str().unwrap_or(""),
            pod_name,
            pod.uid
        ))
        .join(&container);
    let path = dir.join(format!("{}.log", count));
    let follow = options.follow && !options.previous;
    Ok(LogStream {
        path,
        follow: follow.then(|| {
            (
                pod.dir.clone(),
                container.clone(),
                rec.current.map(|a| a.id),
            )
        }),
        options,
    })
}

impl LogStream {
    pub fn copy_to(&self, out: &mut impl Write) -> Result<(), String> {
        copy_log(&self.path, out, self.follow.as_ref(), &self.options)
    }
}

/// Copies the decoded log; when following, keeps reading until that container is no longer the
/// running one (it exited or the pod went away), across rotations: once the file at `path` is a
/// new one, the rest of the old one is read, then the new one from its start.
fn copy_log(
    path: &Path,
    out: &mut impl Write,
    follow: Option<&(PathBuf, String, Option<String>)>,
    options: &LogOptions,
) -> Result<(), String> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow.is_none() => return Ok(()),
        Err(e) => return Err(format!("opening {}: {}", path.display(), e)),
    };
    if let Some(n) = options.tail_lines {
        let start =
            tail_start(&mut file, n).map_err(|e| format!("reading {}: {}", path.display(), e))?;
        file.seek(SeekFrom::Start(start))
            .map_err(|e| format!("reading {}: {}", path.display(), e))?;
    }
    let mut reader = LogReader {
        pending: Vec::new(),
        buf: vec![0u8; 64 * 1024],
        text: Vec::new(),
        at_line_start: true,
        left: options.limit_bytes,
        options: options.clone(),
    };
    loop {
        if reader
            .copy_available(&mut file, out)
            .map_err(|e| format!("reading {}: {}", path.display(), e))?
            > 0
        {
            if reader.left == Some(0) {
                return Ok(());
            }
            continue;
        }
        let Some((pod_dir, container, id)) = follow else {
            return Ok(());
        };
        if rotated(&file, path) {
            while reader
                .copy_available(&mut file, out)
                .map_err(|e| format!("reading {}: {}", path.display(), e))?
                > 0
            {}
            if let Some(next) = next_after_rotation(&file, path) {
                file = next;
                continue;
            }
        }
        let still_running = id.is_some()
            && store::load_container(pod_dir, container)
                .and_then(|r| r.current)
                .map(|a| a.id)
                == *id;
        if !still_running {
            // One more pass picks up what was written just before the container ended.
            reader
                .copy_available(&mut file, out)
                .map_err(|e| format!("reading {}: {}", path.display(), e))?;
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The file written after `open` was rotated away: the next rotated one if there were several
/// rotations since, else the current one. If `open` was already pruned, the oldest kept one.
fn next_after_rotation(open: &std::fs::File, path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let ino = open.metadata().ok()?.ino();
    let mut chain = crate::runtime::log_file::rotated_files(path);
    chain.push(path.to_path_buf());
    let at = chain
        .iter()
        .position(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == ino));
    let next = match at {
        Some(i) => chain.get(i + 1)?,
        None => chain.first()?,
    };
    std::fs::File::open(next).ok()
}

/// Whether the name now belongs to another file than the one open (the monitor rotated it).
fn rotated(open: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (open.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() != b.ino() || a.dev() != b.dev(),
        _ => false,
    }
}

/// Where the last `n` lines of the file start: its end is scanned backwards block by block, so
/// a tail of a large log reads only what it shows.
fn tail_start(file: &mut std::fs::File, n: u64) -> std::io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    if n == 0 {
        return Ok(len);
    }
    let mut pos = len;
    let mut seen = 0u64;
    let mut block = vec![0u8; 32 * 1024];
    let mut last_byte = true;
    while pos > 0 {
        let size = block.len().min(pos as usize);
        pos -= size as u64;
        file.seek(SeekFrom::Start(pos))?;
        file.read_exact(&mut block[..size])?;
        for i in (0..size).rev() {
            if block[i] != b'\n' {
                last_byte = false;
                continue;
            }
            // The newline that ends the file ends the last line; it does not start one.
            if std::mem::take(&mut last_byte) {
                continue;
            }
            seen += 1;
            if seen == n {
                return Ok(pos + i as u64 + 1);
            }
        }
    }
    Ok(0)
}

struct LogReader {
    pending: Vec<u8>,
    buf: Vec<u8>,
    text: Vec<u8>,
    /// Whether the next text starts a line (for the time stamp prefix).
    at_line_start: bool,
    /// Bytes still allowed by limitBytes.
    left: Option<u64>,
    options: LogOptions,
}

impl LogReader {
    /// Reads what the file has now and writes the decoded complete lines; returns bytes read.
    fn copy_available(
        &mut self,
        file: &mut std::fs::File,
        out: &mut impl Write,
    ) -> std::io::Result<usize> {
        if self.left == Some(0) {
            return Ok(0);
        }
        let n = file.read(&mut self.buf)?;
        self.pending.extend_from_slice(&self.buf[..n]);
        let used = self.decode();
        self.pending.drain(..used);
        let mut text = std::mem::take(&mut self.text);
        if let Some(left) = &mut self.left {
            text.truncate((*left).min(text.len() as u64) as usize);
            *left -= text.len() as u64;
        }
        out.write_all(&text)?;
        out.flush()?;
        text.clear();
        self.text = text;
        Ok(n)
    }

    /// Decodes the complete CRI lines of `pending` into `text` with the options applied; returns
    /// how many bytes were used.
    fn decode(&mut self) -> usize {
        let mut consumed = 0;
        while let Some(nl) = self.pending[consumed..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[consumed..consumed + nl];
            consumed += nl + 1;
            let Some(l) = parse_line(line) else { continue };
            if let Some(since) = self.options.since {
                if crate::clock::parse_rfc3339(l.time).is_some_and(|t| t < since) {
                    continue;
                }
            }
            if self.options.timestamps && self.at_line_start {
                self.text.extend_from_slice(l.time.as_bytes());
                self.text.push(b' ');
            }
            self.text.extend_from_slice(l.text);
            if !l.partial {
                self.text.push(b'\n');
            }
            self.at_line_start = !l.partial;
        }
        consumed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_file(lines: &[&str]) -> (PathBuf, std::fs::File) {
        let p = std::env::temp_dir().join(format!(
            "tinylet-logs-{}-{}.log",
            std::process::id(),
            crate::fsutil::random_hex(4).unwrap()
        ));
        let mut text = String::new();
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&p, text).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        (p, f)
    }

    const LINES: &[&str] = &[
        "2026-01-01T00:00:01.000000000Z stdout F one",
        "2026-01-01T00:00:02.000000000Z stderr F two",
        "2026-01-01T00:00:03.000000000Z stdout P thr",
        "2026-01-01T00:00:03.500000000Z stdout F ee",
        "2026-01-01T00:00:04.000000000Z stdout F four",
    ];

    fn copy(options: LogOptions) -> String {
        let (p, _) = log_file(LINES);
        let mut out = Vec::new();
        copy_log(&p, &mut out, None, &options).unwrap();
        std::fs::remove_file(p).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn options_shape_the_output() {
        assert_eq!(copy(LogOptions::default()), "one\ntwo\nthree\nfour\n");
        let tail = |n| {
            copy(LogOptions {
                tail_lines: Some(n),
                ..Default::default()
            })
        };
        assert_eq!(tail(1), "four\n");
        assert_eq!(tail(3), "three\nfour\n", "partial chunks count as lines");
        assert_eq!(tail(0), "");
        assert_eq!(tail(100), "one\ntwo\nthree\nfour\n");
        assert_eq!(
            copy(LogOptions {
                timestamps: true,
                tail_lines: Some(3),
                ..Default::default()
            }),
            "2026-01-01T00:00:03.000000000Z three\n2026-01-01T00:00:04.000000000Z four\n"
        );
        assert_eq!(
            copy(LogOptions {
                since: crate::clock::parse_rfc3339("2026-01-01T00:00:02Z"),
                ..Default::default()
            }),
            "two\nthree\nfour\n"
        );
        assert_eq!(
            copy(LogOptions {
                limit_bytes: Some(6),
                ..Default::default()
            }),
            "one\ntw"
        );
    }

    #[test]
    fn tail_of_a_file_larger_than_a_block() {
        let many: Vec<String> = (0..5000)
            .map(|i| format!("2026-01-01T00:00:01.000000000Z stdout F line {}", i))
            .collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let (p, mut f) = log_file(&refs);
        let start = tail_start(&mut f, 2).unwrap();
        let all = std::fs::read(&p).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&all[start as usize..]),
            format!("{}\n{}\n", many[4998], many[4999])
        );
        std::fs::remove_file(p).unwrap();
    }
}

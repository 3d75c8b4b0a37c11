//! `tinylet logs [-f] [-p] [-n NS] POD [CONTAINER]`: a container's output, decoded from its CRI log.

use crate::kubelet::store;
use crate::runtime::logs::decode;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct LogsRequest<'a> {
    pub root: &'a Path,
    pub log_dir: &'a Path,
    pub namespace: Option<&'a str>,
    pub pod: &'a str,
    pub container: Option<&'a str>,
    pub follow: bool,
    pub previous: bool,
}

/// Finds the pod: its full name, or `NAME` for the static pod `NAME-<node>` when that is unique.
fn find_pod(req: &LogsRequest) -> Result<store::StoredPod, String> {
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
        } else if name
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
        0 => Err(format!(
            "pod {:?} not found under {}",
            req.pod,
            req.root.display()
        )),
        1 => Ok(matches.remove(0)),
        _ => Err(format!(
            "pod name {:?} is ambiguous: give the namespace with -n",
            req.pod
        )),
    }
}

pub fn run(req: &LogsRequest, out: &mut impl Write) -> Result<(), String> {
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
        (Some(c), _) => return Err(format!("container {} is not valid for pod {}", c, pod_name)),
        (None, 1) => names[0].clone(),
        (None, _) => {
            return Err(format!(
                "a container name must be specified for pod {}, choose one of: [{}]",
                pod_name,
                names.join(" ")
            ))
        }
    };
    let rec = store::load_container(&pod.dir, &container).ok_or_else(|| {
        format!(
            "container {} of pod {} has not started yet",
            container, pod_name
        )
    })?;
    let count = if req.previous {
        if !rec.started_once || (rec.restart_count == 0) {
            return Err(format!(
                "previous terminated container {:?} in pod {:?} not found",
                container, pod_name
            ));
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
    let follow = req.follow && !req.previous;
    copy_log(
        &path,
        out,
        follow.then(|| {
            (
                pod.dir.clone(),
                container.clone(),
                rec.current.map(|a| a.id),
            )
        }),
    )
}

/// Copies the decoded log; when following, keeps reading until that container is no longer the
/// running one (it exited or the pod went away), across rotations: once the file at `path` is a
/// new one, the rest of the old one is read, then the new one from its start.
fn copy_log(
    path: &PathBuf,
    out: &mut impl Write,
    follow: Option<(PathBuf, String, Option<String>)>,
) -> Result<(), String> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && follow.is_none() => return Ok(()),
        Err(e) => return Err(format!("opening {}: {}", path.display(), e)),
    };
    let mut reader = LogReader {
        pending: Vec::new(),
        buf: vec![0u8; 64 * 1024],
        text: Vec::new(),
    };
    loop {
        if reader
            .copy_available(&mut file, out)
            .map_err(|e| format!("reading {}: {}", path.display(), e))?
            > 0
        {
            continue;
        }
        let Some((pod_dir, container, id)) = &follow else {
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

struct LogReader {
    pending: Vec<u8>,
    buf: Vec<u8>,
    text: Vec<u8>,
}

impl LogReader {
    /// Reads what the file has now and writes the decoded complete lines; returns bytes read.
    fn copy_available(
        &mut self,
        file: &mut std::fs::File,
        out: &mut impl Write,
    ) -> std::io::Result<usize> {
        let n = file.read(&mut self.buf)?;
        self.pending.extend_from_slice(&self.buf[..n]);
        let used = decode(&self.pending, &mut self.text);
        self.pending.drain(..used);
        out.write_all(&self.text)?;
        out.flush()?;
        self.text.clear();
        Ok(n)
    }
}

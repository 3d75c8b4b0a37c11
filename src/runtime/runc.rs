//! The runc command line, as tinylet uses it. Every call names the container and carries runc's
//! own error text on failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, Clone)]
pub struct Runc {
    pub binary: PathBuf,
    /// runc's state directory (`runc --root`): tmpfs-backed by default so it is empty after a reboot.
    pub root: PathBuf,
}

impl Runc {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null());
        c
    }

    /// `runc run --detach`: the container's stdio is the caller's (the monitor's pipes).
    pub fn run_detached(&self, id: &str, bundle: &Path) -> Command {
        let mut c = self.command();
        c.arg("--log")
            .arg(bundle.join("runc.log"))
            .arg("--log-format")
            .arg("json");
        c.arg("run")
            .arg("--detach")
            .arg("--pid-file")
            .arg(bundle.join("pid"))
            .arg("--bundle")
            .arg(bundle)
            .arg(id);
        c
    }

    pub fn kill(&self, id: &str, signal: &str) -> Result<(), String> {
        self.output(
            self.command().args(["kill", id, signal]),
            &format!("runc kill {} {}", id, signal),
        )
    }

    /// `runc exec ID ARGV...` with output captured, killed after `timeout`. Returns the exit code
    /// (None when it was killed for the timeout) and the first 10 KiB of its output.
    pub fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: std::time::Duration,
    ) -> Result<(Option<i32>, String), String> {
        use std::io::Read;
        let mut child = self
            .command()
            .args(["exec", id])
            .args(argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("runc exec {}: running {}: {}", id, self.binary.display(), e))?;
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(e) => return Err(format!("runc exec {}: {}", id, e)),
            }
        };
        let mut out = String::new();
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn Read>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn Read>),
        ]
        .into_iter()
        .flatten()
        {
            let mut buf = Vec::new();
            let _ = pipe.take(10 * 1024).read_to_end(&mut buf);
            out.push_str(&String::from_utf8_lossy(&buf));
        }
        Ok((status.and_then(|s| s.code()), out))
    }

    /// Removes runc's state for the container; "does not exist" is success.
    pub fn delete(&self, id: &str) -> Result<(), String> {
        match self.output(
            self.command().args(["delete", "--force", id]),
            &format!("runc delete {}", id),
        ) {
            Err(e) if e.contains("does not exist") || e.contains("not exist") => Ok(()),
            other => other,
        }
    }

    /// Whether runc still knows the container (its state dir exists).
    pub fn exists(&self, id: &str) -> bool {
        self.root.join(id).join("state.json").exists()
    }

    pub fn version(&self) -> Result<String, String> {
        let out = self
            .command()
            .arg("--version")
            .output()
            .map_err(|e| format!("running {}: {}", self.binary.display(), e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(2))
            .map(|v| v.to_string())
            .ok_or_else(|| format!("{} --version printed {:?}", self.binary.display(), text))
    }

    fn output(&self, cmd: &mut Command, what: &str) -> Result<(), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("{}: running {}: {}", what, self.binary.display(), e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}: {}",
                what,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

/// The last error runc wrote to its JSON log (`{"level":"error","msg":"..."}`).
pub fn last_error(bundle: &Path) -> Option<String> {
    let text = std::fs::read_to_string(bundle.join("runc.log")).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["level"] == "error")
        .and_then(|v| v["msg"].as_str().map(|s| s.to_string()))
}

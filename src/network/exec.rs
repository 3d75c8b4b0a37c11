//! Running one CNI plugin: the CNI_* environment, the configuration on stdin, the result on
//! stdout. Output is read up to a bound and a plugin that hangs is killed, so a broken plugin
//! costs a pod its network, never the agent a thread.

use super::result::{self, PluginError};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MAX_OUTPUT: u64 = 1 << 20;
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong running a plugin.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecError {
    /// The plugin said why (its error result).
    Plugin(PluginError),
    /// It failed without an error result: exit status and the end of its stderr.
    Failed(String),
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::Plugin(e) => write!(f, "{}", e),
            ExecError::Failed(s) => write!(f, "{}", s),
        }
    }
}

/// Runs `binary` with `env` added to the agent's environment (plugins such as portmap need
/// `PATH` for iptables) and `stdin`; returns its stdout when it exits 0.
pub fn run(
    binary: &Path,
    env: &[(&str, String)],
    stdin: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ExecError> {
    let mut cmd = Command::new(binary);
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group, so a timeout kills whatever it started too (which would otherwise
    // hold the output pipes open).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .map_err(|e| ExecError::Failed(format!("running {}: {}", binary.display(), e)))?;
    let input = stdin.to_vec();
    let mut sin = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(s) = sin.as_mut() {
            // A plugin that does not read its stdin is its own problem: EPIPE is ignored.
            let _ = s.write_all(&input);
        }
    });
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(MAX_OUTPUT).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if Instant::now() >= deadline => {
                if let Ok(pid) = i32::try_from(child.id()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("timed out after {:?}; killed", timeout));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => break Err(e.to_string()),
        }
    };
    let _ = writer.join();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let status = status.map_err(ExecError::Failed)?;
    if status.success() {
        return Ok(stdout);
    }
    if let Some(e) = result::parse_error(&stdout) {
        return Err(ExecError::Plugin(e));
    }
    let tail: String = String::from_utf8_lossy(&stderr)
        .trim()
        .chars()
        .rev()
        .take(500)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(ExecError::Failed(format!(
        "{}{}",
        status,
        if tail.is_empty() {
            String::new()
        } else {
            format!(": {}", tail)
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!(
            "tinylet-plugin-{}-{}",
            std::process::id(),
            crate::fsutil::random_hex(4).unwrap()
        ));
        std::fs::write(&p, format!("#!/bin/sh\n{}\n", body)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn env_stdin_stdout_and_errors() {
        let p = script("cat >/dev/null; echo \"{\\\"cmd\\\":\\\"$CNI_COMMAND\\\"}\"");
        let out = run(&p, &[("CNI_COMMAND", "ADD".into())], b"{}", TIMEOUT).unwrap();
        assert_eq!(String::from_utf8_lossy(&out).trim(), r#"{"cmd":"ADD"}"#);
        let p2 = script(r#"echo '{"code":7,"msg":"bad conf","details":"x"}'; exit 1"#);
        assert_eq!(
            run(&p2, &[], b"", TIMEOUT).unwrap_err().to_string(),
            "bad conf: x"
        );
        let p3 = script("echo boom >&2; exit 3");
        let e = run(&p3, &[], b"", TIMEOUT).unwrap_err().to_string();
        assert!(e.contains("exit status: 3") && e.contains("boom"), "{}", e);
        let p4 = script("sleep 5");
        let e = run(&p4, &[], b"", Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("timed out"), "{}", e);
        for f in [p, p2, p3, p4] {
            std::fs::remove_file(f).unwrap();
        }
    }
}

//! The files that ship tinylet on a device (init/): the SysV script runs a real agent through
//! start, status, stop, start and reload, with BusyBox's start-stop-daemon and with Debian's,
//! logging to a file and to syslog; stopping the agent leaves the pods running and the next
//! start adopts them; the agent reads the shipped init/config.yaml (its paths overridden by
//! flags) without a warning. The OpenRC script and the systemd unit are checked statically
//! (OpenRC is not installed here; systemd is not PID 1).

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use support::*;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The first `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn port_free() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// The body of `GET /healthz`, or None if nothing answers.
fn healthz(port: u16) -> Option<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    conn.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// A process that exists and is not a zombie (nothing reaps the detached agent in some
/// containers, so a stopped agent can linger as one).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{}/stat", pid))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// One way of running the SysV script: a shell, and a PATH whose first directory decides which
/// start-stop-daemon (and logger) it finds.
struct Flavour {
    /// The shell command: program and arguments (`busybox sh`).
    shell: Vec<String>,
    path: String,
}

/// The SysV script of one node, driven through its defaults file.
struct SysV {
    script: PathBuf,
    defaults: PathBuf,
    pidfile: PathBuf,
    settings: String,
    /// Where the agent's log ends up (shown when an action fails).
    log: PathBuf,
}

impl SysV {
    /// `TINYLET_LOG` is a file path or `syslog`.
    fn write_defaults(&self, log: &str) {
        let text = format!("{}TINYLET_LOG={}\n", self.settings, log);
        fs::write(&self.defaults, text).expect("writing the defaults file");
    }

    fn run(&self, flavour: &Flavour, action: &str) -> Output {
        Command::new(&flavour.shell[0])
            .args(&flavour.shell[1..])
            .arg(&self.script)
            .arg(action)
            .env("TINYLET_DEFAULTS", &self.defaults)
            .env("PATH", &flavour.path)
            .output()
            .unwrap_or_else(|e| panic!("running {:?} {}: {}", flavour.shell, action, e))
    }

    /// Runs `action` and asserts its exit code; returns its stdout.
    fn expect(&self, flavour: &Flavour, action: &str, code: i32) -> String {
        let out = self.run(flavour, action);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{:?} S90tinylet {}: stdout {:?}, stderr {:?}\n--- agent log tail:\n{}",
            flavour.shell,
            action,
            stdout,
            String::from_utf8_lossy(&out.stderr),
            {
                let log = fs::read_to_string(&self.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(25)..].join("\n")
            }
        );
        stdout
    }

    fn pid(&self) -> Option<u32> {
        fs::read_to_string(&self.pidfile).ok()?.trim().parse().ok()
    }
}

/// Kills the agent the script started, should an assertion fail while it runs. (Declared after
/// the node, so it drops first; the node then removes the containers.)
struct AgentGuard<'a>(&'a SysV);

impl Drop for AgentGuard<'_> {
    fn drop(&mut self) {
        let Some(pid) = self.0.pid() else { return };
        let is_agent = fs::read_link(format!("/proc/{}/exe", pid))
            .is_ok_and(|exe| exe == Path::new(bin()).canonicalize().unwrap_or_default());
        if is_agent {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Asserts the pidfile names a live tinylet process; returns its pid.
fn assert_agent_running(sysv: &SysV) -> u32 {
    let pid = sysv.pid().expect("start wrote the pidfile");
    assert!(alive(pid), "the agent (pid {}) is alive", pid);
    assert_eq!(
        fs::read_link(format!("/proc/{}/exe", pid)).ok(),
        Path::new(bin()).canonicalize().ok(),
        "pid {} from the pidfile is tinylet",
        pid
    );
    pid
}

fn adoptions(node: &Node, pod: &str) -> usize {
    let line = format!("pod default/{}: adopting running pod", node.full_name(pod));
    node.daemon_log().matches(&line).count()
}

#[test]
fn sysv_script_stops_the_agent_and_not_its_pods() {
    let mut node = Node::create();
    node.import_image();
    let dir = node.dir.join("init");
    let busybox_bin = dir.join("busybox-bin");
    let debian_bin = dir.join("debian-bin");
    fs::create_dir_all(&busybox_bin).unwrap();
    fs::create_dir_all(&debian_bin).unwrap();

    // The shipped configuration, then the node's own directories and a healthz port of its own
    // (the harness turns it off): flags win over the file.
    let port = port_free();
    let config = repo_file("init/config.yaml").display().to_string();
    let mut args = vec!["--config".to_string(), config.clone()];
    args.extend(node.run_args().into_iter().skip(1)); // without "run": the script adds it
    let at = args
        .iter()
        .position(|a| a == "--healthz-port")
        .expect("the harness sets --healthz-port");
    args[at + 1] = port.to_string();
    assert!(
        args.iter().all(|a| !a.contains(char::is_whitespace)),
        "TINYLET_ARGS is split on blanks: {:?}",
        args
    );
    let pidfile = dir.join("tinylet.pid");
    let sysv = SysV {
        script: repo_file("init/sysv/S90tinylet"),
        defaults: dir.join("defaults"),
        settings: format!(
            "TINYLET_BIN={}\nTINYLET_ARGS=\"{}\"\nTINYLET_PIDFILE={}\n",
            bin(),
            args.join(" "),
            pidfile.display()
        ),
        pidfile,
        log: node.daemon_log.clone(),
    };
    let _guard = AgentGuard(&sysv);
    let path = std::env::var("PATH").unwrap_or_default();

    // BusyBox's start-stop-daemon, called by the name the script uses: a multi-call binary picks
    // the applet from argv[0]'s basename. (This busybox's sh runs its own applets before PATH
    // anyway.) The log goes to the harness' daemon log, where its failure messages look.
    let busybox = on_path("busybox").expect("busybox is installed (the test image needs it)");
    symlink(&busybox, busybox_bin.join("start-stop-daemon")).unwrap();
    let bb = Flavour {
        shell: vec![busybox.display().to_string(), "sh".into()],
        path: format!("{}:{}", busybox_bin.display(), path),
    };
    sysv.write_defaults(&node.daemon_log.display().to_string());

    sysv.expect(&bb, "start", 0);
    let first = assert_agent_running(&sysv);
    node.wait_for(WAIT, "healthz to answer ok", |_| {
        healthz(port).is_some_and(|b| b == "ok")
    });
    node.write_manifest(
        "web.yaml",
        &pod_manifest("web")
            .container("c", "while true; do echo tick; sleep 0.2; done")
            .yaml(),
    );
    let pod = node.wait_running("web");
    let id = container_id(&pod, "c");
    assert!(
        !node.daemon_log().contains(&format!("--config {}", config)),
        "init/config.yaml loads without warnings:\n{}",
        node.daemon_log()
    );
    let status = sysv.expect(&bb, "status", 0);
    assert!(status.contains(&first.to_string()), "status: {:?}", status);
    sysv.expect(&bb, "start", 0); // already running: nothing to do, and no second agent
    assert_eq!(sysv.pid(), Some(first));

    sysv.expect(&bb, "stop", 0);
    assert!(!alive(first), "stop ended the agent");
    assert!(!sysv.pidfile.exists(), "stop removed the pidfile");
    sysv.expect(&bb, "status", 3);
    assert_eq!(
        node.runc_status(&id).as_deref(),
        Some("running"),
        "stopping the agent leaves the pod's container running"
    );

    // Debian's start-stop-daemon under the system's sh, and the log through syslog: a `logger`
    // stand-in appends what it is given, with its arguments, to the same daemon log.
    let Some(ssd) = on_path("start-stop-daemon")
        .filter(|p| p.canonicalize().ok() != busybox.canonicalize().ok())
    else {
        eprintln!("no start-stop-daemon other than BusyBox's on PATH: the Debian half is skipped");
        return;
    };
    symlink(&ssd, debian_bin.join("start-stop-daemon")).unwrap();
    let logger = debian_bin.join("logger");
    fs::write(
        &logger,
        format!(
            "#!/bin/sh\necho \"logger $*\" >>{log}\nexec cat >>{log}\n",
            log = node.daemon_log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&logger, fs::Permissions::from_mode(0o755)).unwrap();
    let debian = Flavour {
        shell: vec!["sh".into()],
        path: format!("{}:{}", debian_bin.display(), path),
    };
    sysv.write_defaults("syslog");

    let adopted = adoptions(&node, "web");
    sysv.expect(&debian, "start", 0);
    let second = assert_agent_running(&sysv);
    assert_ne!(second, first);
    node.wait_for(WAIT, "the agent to adopt the pod", |n| {
        adoptions(n, "web") > adopted
    });
    assert!(
        node.daemon_log().contains("logger -t tinylet\n"),
        "the log went through logger -t tinylet:\n{}",
        node.daemon_log_tail(20)
    );
    let after = node.wait_running("web");
    assert_eq!(container_id(&after, "c"), id, "the same container, adopted");
    assert_eq!(
        cstatus(&after, "c")["restartCount"],
        cstatus(&pod, "c")["restartCount"]
    );
    sysv.expect(&debian, "status", 0);

    // reload = restart; the pods are adopted again.
    let adopted = adoptions(&node, "web");
    sysv.expect(&debian, "reload", 0);
    let third = assert_agent_running(&sysv);
    assert!(
        third != second && !alive(second),
        "reload replaced the agent"
    );
    node.wait_for(WAIT, "the reloaded agent to adopt the pod", |n| {
        adoptions(n, "web") > adopted
    });
    node.wait_for(WAIT, "healthz to answer ok after the reload", |_| {
        healthz(port).is_some_and(|b| b == "ok")
    });
    assert_eq!(container_id(&node.wait_running("web"), "c"), id);

    sysv.expect(&debian, "stop", 0);
    assert!(!alive(third), "stop ended the agent");
    sysv.expect(&debian, "status", 3);
    assert_eq!(node.runc_status(&id).as_deref(), Some("running"));
}

#[test]
fn shell_scripts_parse_in_posix_sh_and_busybox_sh() {
    // OpenRC is not installed here: its script is checked for syntax only (it is plain sh that
    // openrc-run sources).
    let busybox = on_path("busybox").expect("busybox is installed");
    for script in ["init/sysv/S90tinylet", "init/openrc/tinylet"] {
        let path = repo_file(script);
        for shell in [&["sh"][..], &[busybox.to_str().unwrap(), "sh"]] {
            let out = Command::new(shell[0])
                .args(&shell[1..])
                .arg("-n")
                .arg(&path)
                .output()
                .unwrap_or_else(|e| panic!("running {:?} -n: {}", shell, e));
            assert!(
                out.status.success(),
                "{:?} -n {}: {}",
                shell,
                script,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{} is executable", script);
    }
}

#[test]
fn systemd_unit_verifies() {
    let unit = fs::read_to_string(repo_file("init/systemd/tinylet.service")).unwrap();
    // The one setting whose loss would take every pod down with `systemctl restart tinylet`.
    assert!(unit.lines().any(|l| l == "KillMode=process"), "{}", unit);
    let Some(analyze) = on_path("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: the unit is not verified");
        return;
    };
    // systemd-analyze checks that ExecStart's binary exists: point it at the one under test.
    const EXEC: &str = "ExecStart=/usr/bin/tinylet ";
    assert!(unit.contains(EXEC), "{}", unit);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("init-unit-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("tinylet.service");
    fs::write(&copy, unit.replace(EXEC, &format!("ExecStart={} ", bin()))).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("running systemd-analyze");
    let _ = fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn default_config_is_a_kubelet_configuration() {
    let text = fs::read_to_string(repo_file("init/config.yaml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("init/config.yaml is YAML");
    let doc = &docs[0];
    assert_eq!(
        doc["apiVersion"].as_str(),
        Some("kubelet.config.k8s.io/v1beta1")
    );
    assert_eq!(doc["kind"].as_str(), Some("KubeletConfiguration"));
    assert_eq!(
        doc["staticPodPath"].as_str(),
        Some("/etc/tinylet/manifests")
    );
    assert_eq!(doc["healthzPort"].as_i64(), Some(10248));
    assert_eq!(doc["healthzBindAddress"].as_str(), Some("127.0.0.1"));
    assert_eq!(doc["maxPods"].as_i64(), Some(110));
}

#[test]
fn sysv_start_fails_when_the_agent_exits_at_once() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("init-fail-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let sysv = SysV {
        script: repo_file("init/sysv/S90tinylet"),
        defaults: dir.join("defaults"),
        pidfile: dir.join("tinylet.pid"),
        settings: format!(
            "TINYLET_BIN={}\nTINYLET_ARGS=\"--no-such-flag 1\"\nTINYLET_PIDFILE={}\n",
            bin(),
            dir.join("tinylet.pid").display()
        ),
        log: dir.join("tinylet.log"),
    };
    let log = dir.join("tinylet.log");
    sysv.write_defaults(&log.display().to_string());
    let sh = Flavour {
        shell: vec!["sh".into()],
        path: std::env::var("PATH").unwrap_or_default(),
    };
    sysv.expect(&sh, "start", 1);
    assert!(!sysv.pidfile.exists(), "a failed start leaves no pidfile");
    let logged = fs::read_to_string(&log).unwrap_or_default();
    assert!(logged.contains("--no-such-flag"), "the log: {:?}", logged);
    // A pidfile whose process is gone: LSB's "dead, but the pidfile exists".
    fs::write(&sysv.pidfile, "999999999\n").unwrap();
    sysv.expect(&sh, "status", 1);
    sysv.expect(&sh, "stop", 0);
    assert!(!sysv.pidfile.exists(), "stop removed the stale pidfile");
    let _ = fs::remove_dir_all(&dir);
}

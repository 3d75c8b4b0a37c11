//! A private network for the proxy tests, never touching the host's: a "node" network
//! namespace holding a bridge (10.244.0.1/24), the proxy and the service addresses, and "pod"
//! namespaces joined to the bridge by veth pairs (10.244.0.<n>/24, default route via the node).
//! Each lab has its own namespaces, so every lab can use the same addresses.
//!
//! Sockets can be opened inside a namespace from this process (`in_ns`: a thread enters it,
//! creates the socket, which stays in that namespace), and the API-server double on the host's
//! 127.0.0.1 is relayed to the node namespace's 127.0.0.1 on the same port (`relay_api`), so a
//! kubeconfig written for the host works unchanged inside the node.
//!
//! Everything is removed on drop; namespaces of test processes that died are swept at start.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);
const PREFIX: &str = "tlp-";
pub const NODE_IP: &str = "10.244.0.1";

pub struct Lab {
    pub node: String,
    pods: Vec<String>,
    children: Vec<Child>,
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    pub fn new() -> Lab {
        sweep_stale();
        let node = format!(
            "{}{}-{}",
            PREFIX,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &node]);
        let lab = Lab {
            node,
            pods: Vec::new(),
            children: Vec::new(),
        };
        let n = lab.node.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{}/24", NODE_IP),
            "dev",
            "br0",
        ]);
        ip(&["-n", n, "link", "set", "br0", "up"]);
        lab
    }

    /// A pod namespace at 10.244.0.`host` on the node's bridge; returns its name.
    pub fn pod(&mut self, host: u8) -> String {
        let ns = format!("{}p{}", self.node, host);
        ip(&["netns", "add", &ns]);
        self.pods.push(ns.clone());
        let veth = format!("v{}", host);
        // Made inside the node namespace, the peer moved straight into the pod's: no link
        // ever exists in the host's namespace.
        ip(&[
            "-n", &self.node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        ip(&[
            "-n", &self.node, "link", "set", &veth, "master", "br0", "up",
        ]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.244.0.{}/24", host),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "route", "add", "default", "via", NODE_IP]);
        ns
    }

    /// Starts `args` inside `ns` (dies with the test); output appended to `log`.
    pub fn spawn(&mut self, ns: &str, args: &[&str], log: &std::path::Path) -> u32 {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening a lab log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("spawning in a lab namespace");
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Runs `args` inside `ns` and returns its stdout.
    pub fn output(&self, ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .expect("running in a lab namespace");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Relays the node namespace's 127.0.0.1:`port` to the host's 127.0.0.1:`port`.
    pub fn relay_api(&self, port: u16) {
        let listener = in_ns(&self.node, move || {
            TcpListener::bind(("127.0.0.1", port)).expect("binding the API relay in the node")
        });
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.pods.iter().chain(std::iter::once(&self.node)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread inside namespace `ns`; what it creates (sockets) stays in `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{}", ns);
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {}", path, e));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering {}: {}", path, e));
        f()
    })
    .join()
    .expect("a thread in a lab namespace panicked")
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Deletes the lab namespaces of test processes that are gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or_default();
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{}", pid)).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
    }
}

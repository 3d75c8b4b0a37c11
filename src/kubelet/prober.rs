//! Container probes as the kubelet runs them: liveness, readiness and startup; `exec` (through
//! `runc exec`), `httpGet` (HTTP and HTTPS, `http.rs`), `tcpSocket` and `grpc` (`grpc.rs`, the
//! gRPC health protocol over h2c), with their thresholds and timing. The pod worker
//! owns the schedule (`Prober`); this module says what one probe is and runs one attempt.
//!
//! HTTP, TCP and gRPC probes dial from inside the pod's network namespace (a thread per pod that
//! `setns`ed into it), to the pod's loopback unless `host` says otherwise: the pod needs no
//! address reachable from the host for its probes to work.

/// The fuzz target's entry point (see src/fuzzing.rs); not in the binary.
#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz;
mod grpc;
mod hpack;
mod http;

use serde_json::Value;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Liveness,
    Readiness,
    Startup,
}

impl Kind {
    pub fn field(self) -> &'static str {
        match self {
            Kind::Liveness => "livenessProbe",
            Kind::Readiness => "readinessProbe",
            Kind::Startup => "startupProbe",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
            Kind::Startup => "Startup",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Exec(Vec<String>),
    Http {
        scheme: String,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    /// The gRPC health protocol; the kubelet dials the pod's IP (here its loopback).
    Grpc {
        port: u16,
        service: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

/// The probe of `kind` in a container's JSON, with the API server's defaults. Errors name the
/// field (an unsupported handler such as grpc is an error: never a probe silently skipped).
pub fn parse(container: &Value, kind: Kind) -> Result<Option<Probe>, String> {
    let p = &container[kind.field()];
    if p.is_null() {
        return Ok(None);
    }
    let field = kind.field();
    let secs = |k: &str, default: u64| p[k].as_u64().unwrap_or(default);
    let action = parse_action(p, container, field)?;
    let success_threshold = secs("successThreshold", 1).max(1) as u32;
    if kind != Kind::Readiness && success_threshold != 1 {
        return Err(format!(
            "{}.successThreshold: Invalid value: must be 1",
            field
        ));
    }
    Ok(Some(Probe {
        action,
        initial_delay: Duration::from_secs(secs("initialDelaySeconds", 0)),
        period: Duration::from_secs(secs("periodSeconds", 10).max(1)),
        timeout: Duration::from_secs(secs("timeoutSeconds", 1).max(1)),
        success_threshold,
        failure_threshold: secs("failureThreshold", 3).max(1) as u32,
    }))
}

/// The handler of a probe or lifecycle hook (`exec`, `httpGet`, `tcpSocket`) at `p`, `field` naming
/// it in errors; named ports are looked up in `container`.
pub fn parse_action(p: &Value, container: &Value, field: &str) -> Result<Action, String> {
    let port_of = |h: &Value| -> Result<u16, String> {
        match &h["port"] {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{}: port {} is not a port number", field, n)),
            Value::String(name) => named_port(container, name)
                .ok_or_else(|| format!("{}: no container port named {:?}", field, name)),
            _ => Err(format!("{}: port: Required value", field)),
        }
    };
    let host_of = |h: &Value| {
        h["host"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let action = if let Some(cmd) = p["exec"]["command"].as_array() {
        let argv: Vec<String> = cmd
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        if argv.is_empty() {
            return Err(format!("{}.exec.command: Required value", field));
        }
        Action::Exec(argv)
    } else if p["httpGet"].is_object() {
        let h = &p["httpGet"];
        let scheme = h["scheme"].as_str().unwrap_or("HTTP").to_uppercase();
        if scheme != "HTTP" && scheme != "HTTPS" {
            return Err(format!(
                "{}.httpGet.scheme: Unsupported value: {:?}",
                field, scheme
            ));
        }
        let headers = h["httpHeaders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|kv| {
                Some((
                    kv["name"].as_str()?.to_string(),
                    kv["value"].as_str()?.to_string(),
                ))
            })
            .collect();
        Action::Http {
            scheme,
            host: host_of(h),
            port: port_of(h)?,
            path: h["path"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("/")
                .to_string(),
            headers,
        }
    } else if p["tcpSocket"].is_object() {
        Action::Tcp {
            host: host_of(&p["tcpSocket"]),
            port: port_of(&p["tcpSocket"])?,
        }
    } else if p["grpc"].is_object() {
        let g = &p["grpc"];
        // A number only: gRPC probes take no named ports.
        let port = g["port"]
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{}.grpc.port: Invalid value: {}", field, g["port"]))?;
        Action::Grpc {
            port,
            service: g["service"].as_str().unwrap_or_default().to_string(),
        }
    } else {
        return Err(format!(
            "{}: one of exec, httpGet, tcpSocket, grpc is required",
            field
        ));
    };
    Ok(action)
}

fn named_port(container: &Value, name: &str) -> Option<u16> {
    container["ports"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)?["containerPort"]
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
}

/// Where an attempt runs.
pub struct Target<'a> {
    pub runtime: &'a crate::runtime::Runtime,
    pub container_id: &'a str,
    /// A thread in the pod's network namespace (None: the host's, for hostNetwork pods).
    pub dialer: Option<&'a NetnsDialer>,
}

type Job = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// A thread that joined a pod's network namespace once and runs HTTP and TCP attempts there for
/// as long as the pod worker keeps it (a thread per attempt cost ~0.5 ms of CPU each, mostly
/// creating and unmapping threads). It ends when dropped.
pub struct NetnsDialer {
    ns: PathBuf,
    jobs: std::sync::mpsc::Sender<(Job, std::sync::mpsc::Sender<Result<(), String>>)>,
}

impl NetnsDialer {
    pub fn start(ns: &Path) -> Result<NetnsDialer, String> {
        let (jobs, rx) =
            std::sync::mpsc::channel::<(Job, std::sync::mpsc::Sender<Result<(), String>>)>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = ns.to_path_buf();
        std::thread::Builder::new()
            .name("prober".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let joined = std::fs::File::open(&path)
                    .map_err(|e| format!("opening network namespace {}: {}", path.display(), e))
                    .and_then(|f| {
                        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                            format!("joining network namespace {}: {}", path.display(), e)
                        })
                    });
                let ok = joined.is_ok();
                let _ = ready_tx.send(joined);
                if ok {
                    for (job, reply) in rx {
                        let _ = reply.send(job());
                    }
                }
            })
            .map_err(|e| format!("starting a prober thread: {}", e))?;
        ready_rx
            .recv()
            .map_err(|_| "the prober thread ended at once".to_string())??;
        Ok(NetnsDialer {
            ns: ns.to_path_buf(),
            jobs,
        })
    }

    /// The namespace it dials from.
    pub fn netns(&self) -> &Path {
        &self.ns
    }

    fn run(&self, job: Job) -> Result<(), String> {
        let (reply, result) = std::sync::mpsc::channel();
        self.jobs
            .send((job, reply))
            .map_err(|_| "the prober thread is gone".to_string())?;
        result
            .recv()
            .map_err(|_| "the prober thread is gone".to_string())?
    }
}

/// One attempt: Ok on success, Err with what the kubelet would show after "probe failed: ".
pub fn run(probe: &Probe, target: &Target) -> Result<(), String> {
    match &probe.action {
        Action::Exec(argv) => {
            let (code, out) = target
                .runtime
                .exec(target.container_id, argv, probe.timeout)?;
            match code {
                Some(0) => Ok(()),
                Some(c) => Err(format!(
                    "command {:?} exited with {}: {}",
                    argv,
                    c,
                    out.trim()
                )),
                None => Err(format!(
                    "command {:?} timed out after {:?}",
                    argv, probe.timeout
                )),
            }
        }
        Action::Tcp { host, port } => {
            let (host, port, timeout) = (host.clone(), *port, probe.timeout);
            in_netns(target.dialer, move || {
                connect(host.as_deref(), port, timeout).map(drop)
            })
        }
        Action::Http {
            scheme,
            host,
            port,
            path,
            headers,
        } => {
            let url = http::Url {
                https: scheme == "HTTPS",
                host: host.clone().unwrap_or_else(|| "127.0.0.1".into()),
                port: *port,
                path: path.clone(),
            };
            let (headers, timeout) = (headers.clone(), probe.timeout);
            in_netns(target.dialer, move || http::probe(url, &headers, timeout))
        }
        Action::Grpc { port, service } => {
            let (port, service, timeout) = (*port, service.clone(), probe.timeout);
            in_netns(target.dialer, move || {
                grpc::probe("127.0.0.1", port, &service, timeout)
            })
        }
    }
}

fn connect(host: Option<&str>, port: u16, timeout: Duration) -> Result<TcpStream, String> {
    let host = host.unwrap_or("127.0.0.1");
    let addr: SocketAddr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {}", host, e))?
        .next()
        .ok_or_else(|| format!("{} has no address", host))?;
    TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("dial tcp {}: {}", addr, e))
}

/// Runs `f` in the pod's network namespace (through its dialer), or here for the host's.
fn in_netns<F>(dialer: Option<&NetnsDialer>, f: F) -> Result<(), String>
where
    F: FnOnce() -> Result<(), String> + Send + 'static,
{
    match dialer {
        Some(d) => d.run(Box::new(f)),
        None => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probes_parse_with_defaults_and_named_ports() {
        let c = json!({
            "ports": [{"name": "http", "containerPort": 8080}],
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
            "readinessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 2, "successThreshold": 2},
            "startupProbe": {"exec": {"command": ["cat", "/tmp/ok"]}, "failureThreshold": 30},
        });
        let l = parse(&c, Kind::Liveness).unwrap().unwrap();
        assert_eq!(l.period, Duration::from_secs(10));
        assert_eq!(l.timeout, Duration::from_secs(1));
        assert_eq!(l.failure_threshold, 3);
        assert!(
            matches!(l.action, Action::Http { port: 8080, ref path, .. } if path == "/healthz")
        );
        let r = parse(&c, Kind::Readiness).unwrap().unwrap();
        assert_eq!(r.success_threshold, 2);
        assert_eq!(
            r.action,
            Action::Tcp {
                host: None,
                port: 9000
            }
        );
        let s = parse(&c, Kind::Startup).unwrap().unwrap();
        assert_eq!(s.failure_threshold, 30);
        assert!(parse(&json!({}), Kind::Liveness).unwrap().is_none());
    }

    #[test]
    fn bad_probes_name_the_field() {
        for (c, want) in [
            (
                json!({"livenessProbe": {"grpc": {"port": "grpc"}}}),
                "livenessProbe.grpc.port",
            ),
            (
                json!({"livenessProbe": {"httpGet": {"port": "web"}}}),
                "no container port named",
            ),
            (
                json!({"livenessProbe": {}}),
                "one of exec, httpGet, tcpSocket",
            ),
            (
                json!({"livenessProbe": {"exec": {"command": ["x"]}, "successThreshold": 2}}),
                "successThreshold",
            ),
        ] {
            let e = parse(&c, Kind::Liveness).unwrap_err();
            assert!(e.contains(want) && e.contains("livenessProbe"), "{}", e);
        }
    }

    #[test]
    fn grpc_probes_parse() {
        let c = json!({"readinessProbe": {"grpc": {"port": 9090, "service": "db"}}});
        let p = parse(&c, Kind::Readiness).unwrap().unwrap();
        assert_eq!(
            p.action,
            Action::Grpc {
                port: 9090,
                service: "db".into()
            }
        );
    }

    #[test]
    fn http_and_tcp_attempts_against_a_local_server() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for (i, c) in l.incoming().enumerate() {
                let mut c = c.unwrap();
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let status = if i == 0 {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = write!(c, "HTTP/1.1 {}\r\nContent-Length: 0\r\n\r\n", status);
            }
        });
        let t = Duration::from_secs(1);
        let url = http::Url {
            https: false,
            host: "127.0.0.1".into(),
            port,
            path: "/".into(),
        };
        assert!(http::probe(url.clone(), &[], t).is_ok());
        let e = http::probe(url, &[], t).unwrap_err();
        assert!(e.contains("503"), "{}", e);
        assert!(connect(None, port, t).is_ok());
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(connect(None, closed, t).is_err());
    }
}

//! The command line: `tinylet run|ps|logs|image|version` (and the internal `shim`).

pub mod args;
mod cluster;
mod config_file;
mod image;
pub mod logs;
mod node_api;
mod proxy;
pub mod ps;
mod stats;

use crate::config::{self, Config};
use crate::image::ImageStore;
use crate::kubelet::{self, backoff::BackoffPolicy, Context};
use crate::runtime::{cgroups::Hierarchy, runc::Runc, Runtime};
use args::Args;
use std::path::PathBuf;

pub const USAGE: &str = "tinylet: a Kubernetes node agent for edge devices

usage:
  tinylet run [--config KUBELETCONFIG.yaml] [--log-level error|warn|info|debug] [--root-dir DIR] [--pod-manifest-path DIR] [--node-name NAME] [--runtime RUNC]
              [--runtime-root DIR] [--pod-log-dir DIR] [--cgroup-root PATH] [--node-ip IP] [-v]
              [--insecure-registry HOST[:PORT]]... [--ca-file PEM]... [--docker-config PATH]
              [--registry-mirror REGISTRY=URL]... [--serialize-image-pulls=false --max-parallel-image-pulls N]
              [--image-gc-high-threshold PCT] [--image-gc-low-threshold PCT] [--image-gc-period DURATION]
              [--minimum-image-ttl-duration DURATION]
              [--kubeconfig FILE] [--bootstrap-kubeconfig FILE] [--node-labels K=V,...]
              [--register-with-taints K=V:EFFECT,...] [--max-pods N] [--port N]
              [--node-status-update-frequency DURATION] [--node-lease-duration-seconds N]
              [--offline-max-age DURATION] [--healthz-port N] [--healthz-bind-address IP]
              [--cluster-domain DOMAIN] [--cluster-dns IP,...] [--resolv-conf FILE]
              [--cni-conf-dir DIR] [--cni-bin-dir DIR,...] [--pod-cidr CIDR[,CIDR]]
              [--container-log-max-size 10Mi] [--container-log-max-files 5]
              [--seccomp-default] [--seccomp-profile-root DIR] [--allowed-unsafe-sysctls NAME|PREFIX*,...]
              [--pod-max-pids N] [--eviction-hard SIGNAL<QUANTITY|PCT%,...] [--eviction-pressure-transition-period 5m]
              [--proxy-mode userspace|none]
              [--address IP] [--tls-cert-file PEM --tls-private-key-file PEM] [--rotate-server-certificates]
              [--client-ca-file PEM] [--authentication-token-webhook[=false]] [--anonymous-auth]
              [--authorization-mode AlwaysAllow|Webhook]
  tinylet proxy --kubeconfig FILE [--node-name NAME] [--log-level LEVEL]   the service proxy alone
  tinylet ps [-o table|json] [--root-dir DIR]
  tinylet logs [-f] [-p] [-n NAMESPACE] [--tail N] [--since 5m|--since-time RFC3339] [--timestamps]
              [--limit-bytes N] [--root-dir DIR] [--pod-log-dir DIR] POD [CONTAINER]
  tinylet stats [-n NAMESPACE] [--interval 1s] [-o table|json] [--root-dir DIR] [--pod-log-dir DIR] [--cgroup-root PATH]
  tinylet image import PATH [--name NAME] | image ls | image rm NAME | image prune   [--root-dir DIR]
  tinylet image pull REF [--root-dir DIR] [--insecure-registry HOST[:PORT]]... [--ca-file PEM]...
              [--docker-config PATH] [--platform OS/ARCH[/VARIANT]] [--creds USER:PASS]
  tinylet validate [--node-name NAME] PATH...     check manifest files or directories, as `run` would read them
  tinylet version
";

pub(crate) const RUN_FLAGS: &[&str] = &[
    "config",
    "log-level",
    "root-dir",
    "pod-manifest-path",
    "node-name",
    "hostname-override",
    "runtime",
    "runtime-root",
    "pod-log-dir",
    "cgroup-root",
    "node-ip",
    "backoff-scale",
    "insecure-registry",
    "ca-file",
    "docker-config",
    "registry-mirror",
    "platform",
    "serialize-image-pulls",
    "max-parallel-image-pulls",
    "image-gc-high-threshold",
    "image-gc-low-threshold",
    "image-gc-period",
    "minimum-image-ttl-duration",
    "image-max-unpacked-size",
    "image-max-entries",
    "kubeconfig",
    "bootstrap-kubeconfig",
    "node-labels",
    "register-with-taints",
    "max-pods",
    "port",
    "node-status-update-frequency",
    "node-status-report-frequency",
    "node-lease-duration-seconds",
    "offline-max-age",
    "healthz-port",
    "healthz-bind-address",
    "cluster-domain",
    "container-log-max-size",
    "container-log-max-files",
    "seccomp-profile-root",
    "allowed-unsafe-sysctls",
    "pod-max-pids",
    "eviction-hard",
    "eviction-pressure-transition-period",
    "eviction-monitoring-period",
    "cni-conf-dir",
    "cni-bin-dir",
    "pod-cidr",
    "cluster-dns",
    "resolv-conf",
    "proxy-mode",
    "address",
    "tls-cert-file",
    "tls-private-key-file",
    "client-ca-file",
    "authorization-mode",
];

/// Boolean flags of `tinylet run` (`--flag`, `--flag=false`).
pub(crate) const RUN_BOOL_FLAGS: &[&str] = &[
    "v",
    "verbose",
    "seccomp-default",
    "anonymous-auth",
    "authentication-token-webhook",
    "rotate-server-certificates",
];

/// `--container-log-max-size` (a quantity, 10Mi; 0 turns rotation off) and
/// `--container-log-max-files` (5; at least 2, as the kubelet requires).
fn log_rotation(a: &Args) -> Result<crate::runtime::log_file::Rotation, String> {
    let mut r = crate::runtime::log_file::Rotation::DEFAULT;
    if let Some(s) = a.get("container-log-max-size") {
        r.max_size = crate::kube::quantity::parse_units(s)
            .map_err(|e| format!("--container-log-max-size {:?}: {}", s, e))?;
    }
    if let Some(s) = a.get("container-log-max-files") {
        r.max_files =
            s.parse().ok().filter(|n| *n >= 2).ok_or_else(|| {
                format!("--container-log-max-files {:?}: a number, at least 2", s)
            })?;
    }
    Ok(r)
}

/// `--cluster-domain` (default `cluster.local`): pods' FQDNs end with it.
fn cluster_domain(a: &Args) -> Result<String, String> {
    let d = a.get("cluster-domain").unwrap_or("cluster.local");
    if !crate::kubelet::manifest::is_dns_subdomain(d) {
        return Err(format!(
            "--cluster-domain {:?}: not a DNS domain (lowercase labels separated by dots)",
            d
        ));
    }
    Ok(d.to_string())
}

pub fn main(argv: Vec<String>) -> Result<(), String> {
    let Some(cmd) = argv.first().map(String::as_str) else {
        print!("{}", USAGE);
        return Err("no command given".into());
    };
    let rest = &argv[1..];
    match cmd {
        "run" => run(rest),
        "ps" => {
            let a = Args::parse(rest, &["root-dir", "o", "output"], &[])?;
            let root = root_dir(&a);
            match a.get("o").or(a.get("output")).unwrap_or("table") {
                "json" => println!(
                    "{}",
                    serde_json::to_string_pretty(&ps::pod_list(&root)).unwrap_or_default()
                ),
                "table" | "wide" => {
                    print!("{}", ps::table(&root, crate::clock::now_unix().as_secs()))
                }
                other => {
                    return Err(format!(
                        "unknown output format {:?} (use table or json)",
                        other
                    ))
                }
            }
            Ok(())
        }
        "logs" => {
            let a = Args::parse(
                rest,
                &[
                    "root-dir",
                    "pod-log-dir",
                    "n",
                    "namespace",
                    "c",
                    "container",
                    "tail",
                    "since",
                    "since-time",
                    "limit-bytes",
                ],
                &["f", "follow", "p", "previous", "timestamps"],
            )?;
            let root = root_dir(&a);
            let log_dir = PathBuf::from(a.get("pod-log-dir").unwrap_or("/var/log/pods"));
            let pod = a
                .positional
                .first()
                .ok_or("usage: tinylet logs [-f] [-p] [-n NAMESPACE] [--tail N] [--since 5m] [--timestamps] [--limit-bytes N] POD [CONTAINER]")?;
            let container = a
                .positional
                .get(1)
                .map(String::as_str)
                .or(a.get("c"))
                .or(a.get("container"));
            let req = logs::LogsRequest {
                root: &root,
                log_dir: &log_dir,
                namespace: a.get("n").or(a.get("namespace")),
                pod,
                container,
                exact: false,
                options: logs_cli_options(&a)?,
            };
            logs::run(&req, &mut std::io::stdout().lock())
        }
        "stats" => stats::main(&Args::parse(rest, stats::FLAGS, &[])?),
        "image" => image::main(rest),
        "proxy" => proxy::main(rest),
        "validate" => validate(rest),
        "version" | "--version" => {
            println!(
                "tinylet {} ({} {})",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH
            );
            Ok(())
        }
        "help" | "--help" | "-h" => {
            print!("{}", USAGE);
            Ok(())
        }
        other => Err(format!("unknown command {:?}\n\n{}", other, USAGE)),
    }
}

/// kubectl's `logs` flags: `--tail N` (-1: all), `--since 5m`, `--since-time RFC3339`,
/// `--timestamps`, `--limit-bytes N`.
fn logs_cli_options(a: &Args) -> Result<logs::LogOptions, String> {
    let number = |flag: &str| -> Result<Option<i64>, String> {
        a.get(flag)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| format!("--{} {:?}: not a number", flag, v))
            })
            .transpose()
    };
    let since = match (a.get("since"), a.get("since-time")) {
        (Some(_), Some(_)) => return Err("give --since or --since-time, not both".into()),
        (Some(d), None) => Some(
            crate::clock::now_unix()
                .saturating_sub(config::parse_duration(d).map_err(|e| format!("--since: {}", e))?),
        ),
        (None, Some(t)) => Some(
            crate::clock::parse_rfc3339(t)
                .ok_or_else(|| format!("--since-time {:?}: not an RFC 3339 time", t))?,
        ),
        (None, None) => None,
    };
    let limit_bytes = match number("limit-bytes")? {
        Some(n) if n <= 0 => return Err("--limit-bytes must be positive".into()),
        n => n.map(|n| n as u64),
    };
    Ok(logs::LogOptions {
        follow: a.flag("f") || a.flag("follow"),
        previous: a.flag("p") || a.flag("previous"),
        tail_lines: number("tail")?.filter(|n| *n >= 0).map(|n| n as u64),
        timestamps: a.flag("timestamps"),
        since,
        limit_bytes,
    })
}

fn root_dir(a: &Args) -> PathBuf {
    PathBuf::from(a.get("root-dir").unwrap_or("/var/lib/tinylet"))
}

/// The flags that bound what one image may unpack to (decompression bombs):
/// `--image-max-unpacked-size` (a quantity, default 8Gi) and `--image-max-entries` (1000000).
const IMAGE_LIMIT_FLAGS: [&str; 2] = ["image-max-unpacked-size", "image-max-entries"];

/// The image store under `--root-dir`, with the unpack limits the flags set.
fn open_image_store(a: &Args) -> Result<ImageStore, String> {
    let mut limits = crate::image::Limits::default();
    if let Some(v) = a.get("image-max-unpacked-size") {
        limits.max_unpacked_bytes = crate::kube::quantity::parse_units(v)
            .map_err(|e| format!("--image-max-unpacked-size: {}", e))?;
    }
    if let Some(v) = a.get("image-max-entries") {
        limits.max_entries = v
            .parse()
            .map_err(|_| format!("--image-max-entries {:?}: must be a whole number", v))?;
    }
    Ok(ImageStore::open(&root_dir(a))
        .map_err(|e| e.to_string())?
        .with_limits(limits))
}

/// Parses manifests exactly as the daemon does and reports each pod or error.
fn validate(rest: &[String]) -> Result<(), String> {
    let a = Args::parse(rest, &["node-name"], &[])?;
    if a.positional.is_empty() {
        return Err("usage: tinylet validate [--node-name NAME] PATH...".into());
    }
    let node = a
        .get("node-name")
        .map(str::to_lowercase)
        .unwrap_or_else(config::default_node_name);
    let mut files = Vec::new();
    for p in &a.positional {
        let path = PathBuf::from(p);
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(&path)
                .map_err(|e| format!("{}: {}", p, e))?
                .flatten()
                .map(|e| e.path())
                .filter(|f| {
                    f.is_file()
                        && !f
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(path);
        }
    }
    let mut errors = 0;
    for f in files {
        for r in kubelet::manifest::read_manifest_file(&f, &node) {
            match r {
                Ok(p) => println!(
                    "ok    {}: pod {} (uid {})",
                    f.display(),
                    p.full_name(),
                    p.uid
                ),
                Err(e) => {
                    errors += 1;
                    println!("error {}", e);
                }
            }
        }
    }
    if errors > 0 {
        return Err(format!("{} invalid manifest document(s)", errors));
    }
    Ok(())
}

fn run(rest: &[String]) -> Result<(), String> {
    let mut a = Args::parse(rest, RUN_FLAGS, RUN_BOOL_FLAGS)?;
    let config_warnings = match a.get("config").map(PathBuf::from) {
        Some(path) => config_file::apply(&path, &mut a)?,
        None => Vec::new(),
    };
    let level = match a.get("log-level") {
        _ if a.flag("v") || a.flag("verbose") => log::LevelFilter::Debug,
        None => log::LevelFilter::Info,
        Some(l) => l.parse().map_err(|_| {
            format!(
                "--log-level {:?}: not one of error, warn, info, debug, trace",
                l
            )
        })?,
    };
    crate::logging::init(level);
    for w in config_warnings {
        log::warn!("{}", w);
    }
    let mut config = Config::default();
    if let Some(v) = a.get("root-dir") {
        config.root_dir = v.into();
    }
    if let Some(v) = a.get("pod-manifest-path") {
        config.pod_manifest_path = v.into();
    }
    if let Some(v) = a.get("node-name").or(a.get("hostname-override")) {
        config.node_name = v.to_lowercase();
    }
    if let Some(v) = a.get("runtime") {
        config.runtime = v.into();
    }
    if let Some(v) = a.get("runtime-root") {
        config.runtime_root = v.into();
    }
    if let Some(v) = a.get("pod-log-dir") {
        config.pod_log_dir = v.into();
    }
    if let Some(v) = a.get("cgroup-root") {
        config.cgroup_root = v.into();
    }
    config.node_ip = a
        .get("node-ip")
        .map(String::from)
        .or_else(config::detect_node_ip);
    if let Some(v) = a.get("backoff-scale") {
        config.backoff_scale = v
            .parse()
            .ok()
            .filter(|s: &f64| *s > 0.0)
            .ok_or_else(|| format!("--backoff-scale {:?}: must be a positive number", v))?;
    }
    image_gc_flags(&a, &mut config)?;
    let runc_path = config::resolve_binary(&config.runtime).ok_or_else(|| {
        format!(
            "container runtime {:?} not found (install runc or pass --runtime PATH)",
            config.runtime.display()
        )
    })?;
    let runc = Runc {
        binary: runc_path,
        root: config.runtime_root.clone(),
    };
    let version = runc.version()?;
    let self_exe =
        std::env::current_exe().map_err(|e| format!("locating the tinylet binary: {}", e))?;
    crate::fsutil::ensure_dir(&config.root_dir).map_err(|e| e.to_string())?;
    let _lock = lock_root(&config.root_dir)?;
    let cgroups = Hierarchy::detect();
    log::info!(
        "tinylet {} starting: node {}, root {}, manifests {}, runc {} ({}), cgroup {}",
        env!("CARGO_PKG_VERSION"),
        config.node_name,
        config.root_dir.display(),
        config.pod_manifest_path.display(),
        version,
        runc.binary.display(),
        if matches!(cgroups, Hierarchy::V2 { .. }) {
            "v2"
        } else {
            "v1"
        }
    );
    let network = std::sync::Arc::new(crate::network::Network::new(network_settings(
        &a,
        &config.root_dir,
    )?));
    let ctx = Context {
        runtime: Runtime {
            runc,
            root_dir: config.root_dir.clone(),
            cgroups: cgroups.clone(),
            cgroup_root: config.cgroup_root.clone(),
            self_exe,
            log_rotation: log_rotation(&a)?,
            qos_cgroups_ready: Default::default(),
        },
        images: kubelet::image_puller::ImagePuller::new(
            open_image_store(&a)?,
            node_pull_options(&a, &config.root_dir)?,
            max_parallel_pulls(&a)?,
        ),
        backoff: BackoffPolicy::scaled(config.backoff_scale),
        node_name: config.node_name.clone(),
        host_ip: config.node_ip.clone(),
        pod_log_dir: config.pod_log_dir.clone(),
        watcher: crate::runtime::watch::BundleWatcher::start()
            .map_err(|e| log::warn!("inotify unavailable ({}); pod workers will poll", e))
            .ok(),
        cluster: Default::default(),
        cluster_domain: cluster_domain(&a)?,
        security: security_settings(&a, &config)?,
        stats: std::sync::Arc::new(crate::stats::Stats::new(crate::stats::Config {
            node_name: config.node_name.clone(),
            root_dir: config.root_dir.clone(),
            pod_log_dir: config.pod_log_dir.clone(),
            cgroups: cgroups.clone(),
            cgroup_root: Some(config.cgroup_root.clone()),
            fs_ttl: std::time::Duration::from_secs(30),
        })),
        pressure: std::sync::Arc::new(kubelet::eviction::NodePressure::new(eviction_settings(
            &a, &config,
        )?)),
        volume_objects: Default::default(),
        network: network.clone(),
    };
    let healthz_port: u16 = match a.get("healthz-port") {
        None => 10248,
        Some(v) => v
            .parse()
            .map_err(|_| format!("--healthz-port {:?}: not a port number (0 turns it off)", v))?,
    };
    crate::server::healthz::start(
        a.get("healthz-bind-address").unwrap_or("127.0.0.1"),
        healthz_port,
    );
    let cluster_mode = cluster::mode(&a, &config, &version, network)?;
    if proxy::mode(&a, cluster_mode.is_some())? == crate::proxy::Mode::Userspace {
        if let Some(cm) = &cluster_mode {
            proxy::start(cm.client.clone(), &config.node_name)?;
        }
    }
    node_api::start(
        &a,
        &config,
        cluster_mode.as_ref().map(|m| m.client.clone()),
        ctx.stats.clone(),
    )?;
    kubelet::run(config, ctx, cluster_mode)
}

/// `--seccomp-default` (=true|false), `--seccomp-profile-root` (default `<root-dir>/seccomp`, as
/// the kubelet's is under its root dir), `--allowed-unsafe-sysctls`, `--pod-max-pids`.
fn security_settings(a: &Args, config: &Config) -> Result<kubelet::security::Settings, String> {
    let seccomp_default = match a.get("seccomp-default") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(format!("--seccomp-default {:?}: must be true or false", v)),
    };
    let pod_pids_limit = match a.get("pod-max-pids") {
        None => -1,
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| format!("--pod-max-pids {:?}: not a number (-1: unlimited)", v))?,
    };
    Ok(kubelet::security::Settings {
        seccomp_default,
        seccomp_profile_root: a
            .get("seccomp-profile-root")
            .map(PathBuf::from)
            .unwrap_or_else(|| config.root_dir.join("seccomp")),
        allowed_unsafe_sysctls: unsafe_sysctls(a)?,
        pod_pids_limit,
    })
}

/// `--allowed-unsafe-sysctls a.b,c.*`, checked as the kubelet does at start-up.
pub(crate) fn unsafe_sysctls(a: &Args) -> Result<Vec<String>, String> {
    let list: Vec<String> = a
        .get("allowed-unsafe-sysctls")
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    kubelet::sysctls::validate_allowlist(&list)?;
    Ok(list)
}

/// `--cni-conf-dir`, `--cni-bin-dir`, `--pod-cidr`, `--cluster-dns`, `--resolv-conf`.
fn network_settings(a: &Args, root: &std::path::Path) -> Result<crate::network::Settings, String> {
    let list = |flag: &str| -> Vec<String> {
        a.get(flag)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let pod_cidrs = list("pod-cidr");
    for c in &pod_cidrs {
        crate::network::default_conf::parse_cidr(c).map_err(|e| format!("--pod-cidr {}", e))?;
    }
    let cluster_dns = list("cluster-dns");
    for ip in &cluster_dns {
        ip.parse::<std::net::IpAddr>()
            .map_err(|_| format!("--cluster-dns {:?}: not an IP address", ip))?;
    }
    // Debian and Ubuntu install the plugins in /usr/lib/cni; the usual place is /opt/cni/bin.
    let bin_dirs: Vec<PathBuf> = match a.get("cni-bin-dir") {
        Some(_) => list("cni-bin-dir").into_iter().map(PathBuf::from).collect(),
        None => vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
    };
    Ok(crate::network::Settings {
        conf_dir: PathBuf::from(a.get("cni-conf-dir").unwrap_or("/etc/cni/net.d")),
        bin_dirs,
        pod_cidrs,
        ipam_dir: root.join("cni").join("networks"),
        cluster_dns,
        cluster_domain: cluster_domain(a)?,
        resolv_conf: match a.get("resolv-conf").unwrap_or("/etc/resolv.conf") {
            "" => None,
            f => Some(PathBuf::from(f)),
        },
    })
}

/// The node's pull settings: the flags, and a docker config.json at `<root-dir>/config.json` or
/// `~/.docker/config.json` (where the kubelet looks for node-wide registry credentials).
fn node_pull_options(
    a: &Args,
    root: &std::path::Path,
) -> Result<crate::image::PullOptions, String> {
    let mut opts = image::pull_options(a)?;
    if opts.docker_config.is_none() {
        let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"));
        opts.docker_config = [Some(root.join("config.json")), home]
            .into_iter()
            .flatten()
            .find(|p| p.is_file());
    }
    Ok(opts)
}

/// `--serialize-image-pulls` (default true, as the kubelet's) or `--max-parallel-image-pulls N`.
fn max_parallel_pulls(a: &Args) -> Result<usize, String> {
    let serialize = match a.get("serialize-image-pulls") {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(format!(
                "--serialize-image-pulls {:?}: must be true or false",
                v
            ))
        }
    };
    if serialize {
        return Ok(1);
    }
    match a.get("max-parallel-image-pulls") {
        None => Ok(usize::MAX),
        Some(v) => v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            format!(
                "--max-parallel-image-pulls {:?}: must be a positive number",
                v
            )
        }),
    }
}

/// `--image-gc-high-threshold`, `--image-gc-low-threshold` (percent, low < high, high 100 turns
/// image GC off), `--image-gc-period` and `--minimum-image-ttl-duration` (durations).
fn image_gc_flags(a: &Args, config: &mut Config) -> Result<(), String> {
    let pct = |flag: &str, default: u8| -> Result<u8, String> {
        match a.get(flag) {
            None => Ok(default),
            Some(v) => v
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("--{} {:?}: must be a percentage, 0 to 100", flag, v)),
        }
    };
    config.image_gc_high_threshold =
        pct("image-gc-high-threshold", config.image_gc_high_threshold)?;
    config.image_gc_low_threshold = pct("image-gc-low-threshold", config.image_gc_low_threshold)?;
    config::validate_image_gc_thresholds(
        config.image_gc_high_threshold,
        config.image_gc_low_threshold,
    )?;
    if let Some(v) = a.get("image-gc-period") {
        config.image_gc_period = config::parse_duration(v)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("--image-gc-period {:?}: must be a positive duration", v))?;
    }
    if let Some(v) = a.get("minimum-image-ttl-duration") {
        config.image_minimum_gc_age = config::parse_duration(v)
            .map_err(|e| format!("--minimum-image-ttl-duration: {}", e))?;
    }
    Ok(())
}

/// `--eviction-hard` (the kubelet's defaults when absent; an empty value turns eviction off;
/// a given set replaces the defaults whole), `--eviction-pressure-transition-period` (5m) and
/// `--eviction-monitoring-period` (10 s, the kubelet's housekeeping; a flag for tests).
fn eviction_settings(a: &Args, config: &Config) -> Result<kubelet::eviction::Settings, String> {
    let mut s = kubelet::eviction::Settings {
        image_min_age: config.image_minimum_gc_age,
        ..Default::default()
    };
    if let Some(v) = a.get("eviction-hard") {
        s.thresholds = kubelet::eviction::thresholds::parse(v)?;
    }
    let duration = |flag: &str| -> Result<Option<std::time::Duration>, String> {
        a.get(flag)
            .map(|v| config::parse_duration(v).map_err(|e| format!("--{}: {}", flag, e)))
            .transpose()
    };
    if let Some(d) = duration("eviction-pressure-transition-period")? {
        s.transition = d;
    }
    if let Some(d) = duration("eviction-monitoring-period")? {
        if d.is_zero() {
            return Err("--eviction-monitoring-period: must be a positive duration".into());
        }
        s.period = d;
    }
    Ok(s)
}

/// One agent per root dir: an exclusive flock held for the daemon's life.
///
/// The lock is waited for a few seconds: right after the previous agent was SIGKILLed (and a
/// supervisor restarts at once), a process it was forking may still hold a copy of the lock's
/// descriptor until it execs, or the dying agent may not have closed its files yet (seen in
/// scripts/chaos). A second agent that really runs holds it for longer and is refused.
fn lock_root(root: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    let path = root.join("tinylet.lock");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {}", path.display(), e))?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(_) => {
                return Err(format!(
                    "another tinylet is running with root dir {}",
                    root.display()
                ))
            }
        }
    }
}

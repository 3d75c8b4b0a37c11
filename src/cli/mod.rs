//! The command line: `tinylet run|ps|logs|image|version` (and the internal `shim`).

pub mod args;
pub mod logs;
pub mod ps;

use crate::config::{self, Config};
use crate::image::ImageStore;
use crate::kubelet::{self, backoff::BackoffPolicy, Context};
use crate::runtime::{cgroups::Hierarchy, runc::Runc, Runtime};
use args::Args;
use std::path::PathBuf;

pub const USAGE: &str = "tinylet: a Kubernetes node agent for edge devices

usage:
  tinylet run [--root-dir DIR] [--pod-manifest-path DIR] [--node-name NAME] [--runtime RUNC]
              [--runtime-root DIR] [--pod-log-dir DIR] [--cgroup-root PATH] [--node-ip IP] [-v]
              [--insecure-registry HOST[:PORT]]... [--ca-file PEM]... [--docker-config PATH]
              [--registry-mirror REGISTRY=URL]... [--serialize-image-pulls=false --max-parallel-image-pulls N]
  tinylet ps [-o table|json] [--root-dir DIR]
  tinylet logs [-f] [-p] [-n NAMESPACE] [--root-dir DIR] [--pod-log-dir DIR] POD [CONTAINER]
  tinylet image import PATH [--name NAME] | image ls | image rm NAME   [--root-dir DIR]
  tinylet image pull REF [--root-dir DIR] [--insecure-registry HOST[:PORT]]... [--ca-file PEM]...
              [--docker-config PATH] [--platform OS/ARCH[/VARIANT]] [--creds USER:PASS]
  tinylet validate [--node-name NAME] PATH...     check manifest files or directories, as `run` would read them
  tinylet version
";

const RUN_FLAGS: &[&str] = &[
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
];

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
                ],
                &["f", "follow", "p", "previous"],
            )?;
            let root = root_dir(&a);
            let log_dir = PathBuf::from(a.get("pod-log-dir").unwrap_or("/var/log/pods"));
            let pod = a
                .positional
                .first()
                .ok_or("usage: tinylet logs [-f] [-p] [-n NAMESPACE] POD [CONTAINER]")?;
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
                follow: a.flag("f") || a.flag("follow"),
                previous: a.flag("p") || a.flag("previous"),
            };
            logs::run(&req, &mut std::io::stdout().lock())
        }
        "image" => image(rest),
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

fn root_dir(a: &Args) -> PathBuf {
    PathBuf::from(a.get("root-dir").unwrap_or("/var/lib/tinylet"))
}

const IMAGE_USAGE: &str = "usage: tinylet image import PATH [--name NAME] | image pull REF [flags] | image ls | image rm NAME";

fn image(rest: &[String]) -> Result<(), String> {
    let a = Args::parse(
        rest,
        &[
            "root-dir",
            "name",
            "insecure-registry",
            "ca-file",
            "docker-config",
            "platform",
            "registry-mirror",
            "creds",
        ],
        &[],
    )?;
    let store = ImageStore::open(&root_dir(&a)).map_err(|e| e.to_string())?;
    match a.positional.first().map(String::as_str) {
        Some("pull") => image_pull(&store, &a),
        Some("import") => {
            let path = a
                .positional
                .get(1)
                .ok_or("usage: tinylet image import PATH [--name NAME]")?;
            let images = store
                .import(std::path::Path::new(path), a.get("name"))
                .map_err(|e| format!("importing {}: {}", path, e))?;
            for i in images {
                println!("imported {} ({})", i.name, i.id);
            }
            Ok(())
        }
        Some("ls") | Some("list") => {
            println!("{:<50} {:<20} {:>10}", "IMAGE", "ID", "SIZE");
            for i in store.list().map_err(|e| e.to_string())? {
                let id = i.id.trim_start_matches("sha256:");
                println!(
                    "{:<50} {:<20} {:>10}",
                    i.name,
                    &id[..id.len().min(12)],
                    human_size(i.size)
                );
            }
            Ok(())
        }
        Some("rm") | Some("remove") => {
            let name = a.positional.get(1).ok_or("usage: tinylet image rm NAME")?;
            store
                .remove(name)
                .map_err(|e| format!("removing {}: {}", name, e))?;
            println!("removed {}", name);
            Ok(())
        }
        _ => Err(IMAGE_USAGE.into()),
    }
}

/// `image pull`: progress lines (layer i/n, bytes, rate) to stderr, the result to stdout.
/// Registry settings shared by `image pull` and `run`: `--insecure-registry`, `--ca-file`,
/// `--docker-config`, `--registry-mirror REGISTRY=URL`, `--platform`.
fn pull_options(a: &Args) -> Result<crate::image::PullOptions, String> {
    let mut opts = crate::image::PullOptions {
        insecure_registries: a
            .get_all("insecure-registry")
            .into_iter()
            .map(String::from)
            .collect(),
        ca_files: a
            .get_all("ca-file")
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        docker_config: a.get("docker-config").map(PathBuf::from),
        ..Default::default()
    };
    for m in a.get_all("registry-mirror") {
        let (registry, url) = m
            .split_once('=')
            .ok_or_else(|| format!("--registry-mirror {:?}: must be REGISTRY=URL", m))?;
        opts.mirrors
            .entry(registry.to_string())
            .or_default()
            .push(url.to_string());
    }
    if let Some(p) = a.get("platform") {
        opts.platform = Some(crate::image::Platform::parse(p).map_err(|e| e.to_string())?);
    }
    Ok(opts)
}

fn image_pull(store: &ImageStore, a: &Args) -> Result<(), String> {
    use crate::image::{PullProgress, RegistryAuth};
    use std::time::{Duration, Instant};

    let reference = a.positional.get(1).ok_or(
        "usage: tinylet image pull REF [--insecure-registry HOST[:PORT]]... [--ca-file PEM]... \
         [--docker-config PATH] [--platform OS/ARCH[/VARIANT]] [--creds USER:PASS]",
    )?;
    let domain = crate::image::normalize_reference(reference)
        .map_err(|e| e.to_string())?
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut opts = pull_options(a)?;
    if let Some(creds) = a.get("creds") {
        let (username, password) = creds.split_once(':').ok_or("--creds must be USER:PASS")?;
        opts.auths.push(RegistryAuth {
            registry: domain,
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    // (layer, when its download started, when a line was last printed)
    let mut current: Option<(usize, Instant, Instant)> = None;
    let mut report = |p: PullProgress| {
        let now = Instant::now();
        let done = p.bytes >= p.total;
        let (started, printed) = match current {
            Some((layer, started, printed)) if layer == p.layer => (started, Some(printed)),
            _ => (now, None),
        };
        current = Some((p.layer, started, printed.unwrap_or(now)));
        if printed.is_none() && done {
            eprintln!(
                "layer {}/{}: {} already present",
                p.layer,
                p.layers,
                human_size(p.total)
            );
            return;
        }
        // A line when a layer starts and ends, and at most two a second in between.
        if printed.is_some_and(|at| !done && now - at < Duration::from_millis(500)) {
            return;
        }
        let rate = p.bytes as f64 / (now - started).as_secs_f64().max(0.001);
        eprintln!(
            "layer {}/{}: {} / {} ({}/s)",
            p.layer,
            p.layers,
            human_size(p.bytes),
            human_size(p.total),
            human_size(rate as u64)
        );
        current = Some((p.layer, started, now));
    };
    let image = store
        .pull(reference, &opts, &mut report)
        .map_err(|e| pull_error(reference, &e))?;
    println!("pulled {} ({})", image.name, image.id);
    Ok(())
}

/// The error and its causes; pull-specific errors already start with "pulling <ref>".
fn pull_error(reference: &str, e: &crate::image::ImageError) -> String {
    let mut msg = e.to_string();
    if !msg.starts_with("pulling ") {
        msg = format!("pulling {}: {}", reference, msg);
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {}", s));
        source = s.source();
    }
    msg
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

fn human_size(b: u64) -> String {
    match b {
        0..=1023 => format!("{}B", b),
        1024..=1048575 => format!("{:.1}KiB", b as f64 / 1024.0),
        _ => format!("{:.1}MiB", b as f64 / 1048576.0),
    }
}

fn run(rest: &[String]) -> Result<(), String> {
    let a = Args::parse(rest, RUN_FLAGS, &["v", "verbose"])?;
    let level = if a.flag("v") || a.flag("verbose") {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    let _ = simple_logger::SimpleLogger::new()
        .with_level(level)
        .with_utc_timestamps()
        .init();
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
    let ctx = Context {
        runtime: Runtime {
            runc,
            root_dir: config.root_dir.clone(),
            cgroups,
            cgroup_root: config.cgroup_root.clone(),
            self_exe,
        },
        images: kubelet::image_puller::ImagePuller::new(
            ImageStore::open(&config.root_dir).map_err(|e| e.to_string())?,
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
    };
    kubelet::run(config, ctx)
}

/// The node's pull settings: the flags, and a docker config.json at `<root-dir>/config.json` or
/// `~/.docker/config.json` (where the kubelet looks for node-wide registry credentials).
fn node_pull_options(
    a: &Args,
    root: &std::path::Path,
) -> Result<crate::image::PullOptions, String> {
    let mut opts = pull_options(a)?;
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

/// One agent per root dir: an exclusive flock held for the daemon's life.
fn lock_root(root: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    let path = root.join("tinylet.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("opening {}: {}", path.display(), e))?;
    let lock =
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
            format!(
                "another tinylet is running with root dir {}",
                root.display()
            )
        })?;
    Ok(lock)
}

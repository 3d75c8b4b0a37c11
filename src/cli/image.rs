//! `tinylet image import|pull|ls|rm|prune`: the image store from the command line.

use super::args::Args;
use super::{open_image_store, root_dir, IMAGE_LIMIT_FLAGS};
use crate::image::ImageStore;
use crate::kubelet;
use std::path::PathBuf;

const IMAGE_USAGE: &str = "usage: tinylet image import PATH [--name NAME] | image pull REF [flags] | image ls | image rm NAME | image prune";

pub(super) fn main(rest: &[String]) -> Result<(), String> {
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
            IMAGE_LIMIT_FLAGS[0],
            IMAGE_LIMIT_FLAGS[1],
        ],
        &[],
    )?;
    let store = open_image_store(&a)?;
    match a.positional.first().map(String::as_str) {
        Some("pull") => image_pull(&store, &a),
        Some("import") => {
            let path = a
                .positional
                .get(1)
                .ok_or("usage: tinylet image import PATH [--name NAME]")?;
            let images = store
                .import(std::path::Path::new(path), a.get("name"))
                .map_err(|e| format!("importing {}: {}", path, e.with_causes()))?;
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
                .map_err(|e| format!("removing {}: {}", name, e.with_causes()))?;
            println!("removed {}", name);
            Ok(())
        }
        Some("prune") => prune(&store, &root_dir(&a)),
        _ => Err(IMAGE_USAGE.into()),
    }
}

/// `image prune`: removes every image no pod under the root dir uses, by the same reckoning as
/// the daemon's image GC (`kubelet::image_gc::images_in_use`), but all of them and at any age.
fn prune(store: &ImageStore, root: &std::path::Path) -> Result<(), String> {
    let in_use = kubelet::image_gc::images_in_use(root)
        .map_err(|e| format!("finding the images pods use (nothing removed): {}", e))?;
    let report = store
        .prune(&in_use)
        .map_err(|e| format!("pruning images: {}", e.with_causes()))?;
    for r in &report.removed {
        let id = r.id.trim_start_matches("sha256:");
        println!(
            "removed {} ({}, {} freed)",
            r.label(),
            &id[..id.len().min(12)],
            human_size(r.freed)
        );
    }
    if report.removed.is_empty() {
        println!("no unused images");
    } else {
        println!(
            "{} image(s) removed, {} freed",
            report.removed.len(),
            human_size(report.freed)
        );
    }
    Ok(())
}

/// `image pull`: progress lines (layer i/n, bytes, rate) to stderr, the result to stdout.
/// Registry settings shared by `image pull` and `run`: `--insecure-registry`, `--ca-file`,
/// `--docker-config`, `--registry-mirror REGISTRY=URL`, `--platform`.
pub(super) fn pull_options(a: &Args) -> Result<crate::image::PullOptions, String> {
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
    // On a terminal each layer's progress rewrites one line (ten times a second); in a log file
    // or pipe it is a line when a layer starts and ends, and two a second in between.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let say = |line: String, final_for_layer: bool| {
        if tty {
            eprint!(
                "\r\x1b[2K{}{}",
                line,
                if final_for_layer { "\n" } else { "" }
            );
        } else {
            eprintln!("{}", line);
        }
    };
    let interval = Duration::from_millis(if tty { 100 } else { 500 });
    let mut report = |p: PullProgress| {
        let now = Instant::now();
        let done = p.bytes >= p.total;
        let (started, printed) = match current {
            Some((layer, started, printed)) if layer == p.layer => (started, Some(printed)),
            _ => (now, None),
        };
        current = Some((p.layer, started, printed.unwrap_or(now)));
        if printed.is_none() && done {
            say(
                format!(
                    "layer {}/{}: {} already present",
                    p.layer,
                    p.layers,
                    human_size(p.total)
                ),
                true,
            );
            return;
        }
        if printed.is_some_and(|at| !done && now - at < interval) {
            return;
        }
        let rate = p.bytes as f64 / (now - started).as_secs_f64().max(0.001);
        say(
            format!(
                "layer {}/{}: {} / {} ({}/s)",
                p.layer,
                p.layers,
                human_size(p.bytes),
                human_size(p.total),
                human_size(rate as u64)
            ),
            done,
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
    let msg = e.with_causes();
    if msg.starts_with("pulling ") {
        msg
    } else {
        format!("pulling {}: {}", reference, msg)
    }
}

fn human_size(b: u64) -> String {
    match b {
        0..=1023 => format!("{}B", b),
        1024..=1048575 => format!("{:.1}KiB", b as f64 / 1024.0),
        _ => format!("{:.1}MiB", b as f64 / 1048576.0),
    }
}

//! `--proxy-mode` for `tinylet run`, and `tinylet proxy`: the service proxy alone, for a node
//! that runs no pods (no runc, no root dir needed).

use super::args::Args;
use crate::kube::client::ApiClient;
use crate::proxy::{self, Mode};
use std::sync::Arc;

/// `--proxy-mode`: userspace by default in cluster mode, none without a kubeconfig.
pub fn mode(a: &Args, cluster: bool) -> Result<Mode, String> {
    match a.get("proxy-mode") {
        Some(v) => {
            let m = Mode::parse(v)?;
            if m == Mode::Userspace && !cluster {
                return Err(
                    "--proxy-mode=userspace needs --kubeconfig (services come from the API server)"
                        .into(),
                );
            }
            Ok(m)
        }
        None if cluster => Ok(Mode::Userspace),
        None => Ok(Mode::None),
    }
}

pub fn start(client: Arc<ApiClient>, node_name: &str) -> Result<(), String> {
    let splice = std::env::var("TINYLET_PROXY_SPLICE").as_deref() != Ok("0");
    // One TCP thread per CPU by default, as HAProxy's nbthread: on a busy node the scheduler
    // shares CPU time per thread, and a single-threaded proxy got a smaller share than the
    // clients and servers around it (capped: more threads only cost memory on a device).
    let threads = std::env::var("TINYLET_PROXY_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)));
    proxy::start(
        client,
        proxy::Settings {
            node_name: node_name.to_string(),
            splice,
            threads,
        },
    )
}

/// `tinylet proxy --kubeconfig FILE [--node-name NAME] [--log-level L]`.
pub fn main(rest: &[String]) -> Result<(), String> {
    let a = Args::parse(
        rest,
        &[
            "kubeconfig",
            "node-name",
            "hostname-override",
            "log-level",
            "proxy-mode",
        ],
        &["v"],
    )?;
    let level = match a.get("log-level") {
        _ if a.flag("v") => log::LevelFilter::Debug,
        None => log::LevelFilter::Info,
        Some(l) => l
            .parse()
            .map_err(|_| format!("--log-level {:?}: not a log level", l))?,
    };
    crate::logging::init(level);
    let kubeconfig = a
        .get("kubeconfig")
        .ok_or("tinylet proxy needs --kubeconfig FILE")?;
    if mode(&a, true)? == Mode::None {
        return Err("tinylet proxy with --proxy-mode=none has nothing to do".into());
    }
    let node = a
        .get("node-name")
        .or(a.get("hostname-override"))
        .map(str::to_lowercase)
        .unwrap_or_else(crate::config::default_node_name);
    let conn = crate::kube::kubeconfig::load(std::path::Path::new(kubeconfig))?;
    let client = Arc::new(ApiClient::new(conn)?);
    log::info!(
        "tinylet {} proxy starting: node {}, API server {}",
        env!("CARGO_PKG_VERSION"),
        node,
        client.server()
    );
    start(client, &node)?;
    loop {
        std::thread::park();
    }
}

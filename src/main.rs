//! tinylet: a Kubernetes node agent for edge devices — kubelet, runc driver and (later) service
//! proxy in one small static binary. See docs/ARCHITECTURE.md for the module map.

mod ballast;
mod base64;
mod cli;
mod clock;
mod config;
mod fsutil;
#[cfg(any(test, fuzzing))]
mod fuzzing;
mod image;
mod kube;
mod kubelet;
mod logging;
mod network;
mod proxy;
mod runtime;
mod server;
mod stats;
mod tls;

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // The container monitor must stay tiny: no logger, no config, straight to its loop.
    if argv.first().map(String::as_str) == Some("shim") {
        let code = match runtime::shim::ShimArgs::parse(&argv[1..]) {
            Ok(a) => runtime::shim::main(a),
            Err(e) => {
                eprintln!("tinylet shim: {}", e);
                2
            }
        };
        std::process::exit(code);
    }
    if let Err(e) = cli::main(argv) {
        eprintln!("error: {}", e);
        std::process::exit(1);
    }
}

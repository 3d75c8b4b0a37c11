//! tinylet's sources compiled as a library for the fuzz targets: every top-level module of
//! src/main.rs, included by path under the same name so that `crate::` paths resolve as in the
//! binary (a unit test in src/fuzzing.rs checks that this list matches src/main.rs). The binary's
//! own build is untouched; see docs/FUZZING.md for why this and not a src/lib.rs.
#![allow(dead_code, unused_imports, unused_macros, unused_variables)]
#![allow(clippy::all)]

#[path = "../../src/ballast.rs"]
pub mod ballast;
#[path = "../../src/base64.rs"]
pub mod base64;
#[path = "../../src/cli/mod.rs"]
pub mod cli;
#[path = "../../src/clock.rs"]
pub mod clock;
#[path = "../../src/config.rs"]
pub mod config;
#[path = "../../src/fsutil.rs"]
pub mod fsutil;
#[path = "../../src/fuzzing.rs"]
pub mod fuzzing;
#[path = "../../src/image/mod.rs"]
pub mod image;
#[path = "../../src/kube/mod.rs"]
pub mod kube;
#[path = "../../src/kubelet/mod.rs"]
pub mod kubelet;
#[path = "../../src/logging.rs"]
pub mod logging;
#[path = "../../src/network/mod.rs"]
pub mod network;
#[path = "../../src/proxy/mod.rs"]
pub mod proxy;
#[path = "../../src/runtime/mod.rs"]
pub mod runtime;
#[path = "../../src/server/mod.rs"]
pub mod server;
#[path = "../../src/stats/mod.rs"]
pub mod stats;
#[path = "../../src/tls.rs"]
pub mod tls;

//! The node API's flags (kubelet names) -> a running `server` (or none with `--port 0`):
//!
//! - `--port` (10250), `--address` (0.0.0.0);
//! - serving certificate: `--tls-cert-file` + `--tls-private-key-file`, or
//!   `--rotate-server-certificates` (a `kubernetes.io/kubelet-serving` CSR, cluster mode), or
//!   else a self-signed pair in `<root>/pki/kubelet.crt|key`;
//! - `--client-ca-file` (x509 client certificates), `--authentication-token-webhook`
//!   (TokenReview; default on in cluster mode), `--anonymous-auth` (default off);
//! - `--authorization-mode AlwaysAllow|Webhook` (default Webhook in cluster mode, as a
//!   KubeletConfiguration file defaults it; AlwaysAllow standalone, where there is no API server
//!   to ask — and where, with anonymous access off, only client certificates get in).

use super::args::Args;
use crate::config::Config;
use crate::kube::client::ApiClient;
use crate::kubelet::cluster::bootstrap;
use crate::server::{self, authn, authz, tls};
use std::sync::Arc;

fn boolean(a: &Args, flag: &str) -> Result<Option<bool>, String> {
    match a.get(flag) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(v) => Err(format!("--{} {:?}: must be true or false", flag, v)),
    }
}

pub fn start(
    a: &Args,
    config: &Config,
    client: Option<Arc<ApiClient>>,
    stats: Arc<dyn crate::stats::StatsSource>,
) -> Result<(), String> {
    let port: u16 = match a.get("port") {
        None => 10250,
        Some(v) => v
            .parse()
            .map_err(|_| format!("--port {:?}: not a port number (0 turns it off)", v))?,
    };
    let address = a.get("address").unwrap_or("0.0.0.0").to_string();
    if address.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("--address {:?}: not an IP address", address));
    }
    let reviewer = client.clone().map(|c| c as Arc<dyn server::Reviewer>);
    let token_webhook = match (boolean(a, "authentication-token-webhook")?, &reviewer) {
        (Some(true), None) => return Err(
            "--authentication-token-webhook needs --kubeconfig (TokenReviews go to the API server)"
                .into(),
        ),
        (Some(false), _) => None,
        (_, r) => r.clone(),
    };
    let mode = match (a.get("authorization-mode"), &reviewer) {
        (Some("AlwaysAllow"), _) | (None, None) => authz::Mode::AlwaysAllow,
        (Some("Webhook"), Some(r)) | (None, Some(r)) => authz::Mode::Webhook(r.clone()),
        (Some("Webhook"), None) => {
            return Err("--authorization-mode Webhook needs --kubeconfig (SubjectAccessReviews go to the API server)".into())
        }
        (Some(m), _) => {
            return Err(format!(
                "--authorization-mode {:?}: must be AlwaysAllow or Webhook",
                m
            ))
        }
    };
    let rotate = boolean(a, "rotate-server-certificates")?.unwrap_or(false);
    let files = match (a.get("tls-cert-file"), a.get("tls-private-key-file")) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(
                "--tls-cert-file and --tls-private-key-file go together: give both or neither"
                    .into(),
            )
        }
    };
    if port == 0 {
        log::info!("node API: off (--port 0)");
        return Ok(());
    }
    let cert = Arc::new(tls::ServingCert::default());
    match (files, rotate, &client) {
        (Some(_), true, _) => {
            return Err("give --tls-cert-file or --rotate-server-certificates, not both".into())
        }
        (_, true, None) => {
            return Err(
                "--rotate-server-certificates needs --kubeconfig (the CSR goes to the API server)"
                    .into(),
            )
        }
        (Some((c, k)), false, _) => {
            let read = |p: &str| std::fs::read(p).map_err(|e| format!("{}: {}", p, e));
            cert.install(&read(c)?, &read(k)?).map_err(|e| {
                format!(
                    "--tls-cert-file {} / --tls-private-key-file {}: {}",
                    c, k, e
                )
            })?;
        }
        (None, true, Some(client)) => serving_csr(config, client.clone(), cert.clone())?,
        (None, false, _) => {
            let (c, k) = tls::self_signed(
                &config.root_dir,
                &config.node_name,
                config.node_ip.as_deref(),
            )?;
            cert.install(&c, &k)?;
        }
    }
    let client_ca = a.get("client-ca-file").map(std::path::Path::new);
    server::start(server::Settings {
        address,
        port,
        root_dir: config.root_dir.clone(),
        pod_log_dir: config.pod_log_dir.clone(),
        tls: tls::server_config(client_ca, cert)?,
        authn: authn::Authenticator::new(
            boolean(a, "anonymous-auth")?.unwrap_or(false),
            token_webhook,
        ),
        authz: authz::Authorizer::new(mode, config.node_name.clone()),
        stats,
    });
    Ok(())
}

/// The serving certificate from a `kubernetes.io/kubelet-serving` CSR for the node's name and
/// IP: the last one issued is used at once if still valid; the rotation thread asks for one
/// when there is none (the server refuses handshakes until it is approved and signed) and
/// renews it at 70-90 % of its life.
fn serving_csr(
    config: &Config,
    client: Arc<ApiClient>,
    cert: Arc<tls::ServingCert>,
) -> Result<(), String> {
    let current = bootstrap::serving_current(&config.root_dir);
    if let Ok(pem) = std::fs::read(&current) {
        let valid = std::str::from_utf8(&pem)
            .ok()
            .and_then(|t| crate::kube::pki::parse_cert_pem(t).ok())
            .and_then(|c| c.into_iter().next())
            .is_some_and(|c| c.not_after > crate::clock::now_unix().as_secs());
        if valid {
            if let Err(e) = cert.install(&pem, &pem) {
                log::warn!("{}: {}", current.display(), e);
            }
        }
    }
    let ips: Vec<std::net::IpAddr> = config
        .node_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .into_iter()
        .collect();
    let kind = bootstrap::CertKind::serving(vec![config.node_name.clone()], ips);
    if !cert.is_set() {
        log::info!(
            "node API: requesting a serving certificate ({}); it needs approval",
            bootstrap::SERVING_SIGNER
        );
    }
    bootstrap::start_serving_rotation(
        client,
        config.root_dir.clone(),
        config.node_name.clone(),
        kind,
        move |c, k| cert.install(c.as_bytes(), k.as_bytes()),
    )
}

//! TLS bootstrap and client-certificate rotation, as the kubelet does them
//! (pkg/kubelet/certificate/bootstrap, client-go's certificate manager):
//!
//! - With `--bootstrap-kubeconfig` and no usable `--kubeconfig`, tinylet makes an ECDSA P-256 key
//!   on the device (it never leaves it), sends a CertificateSigningRequest (signer
//!   `kubernetes.io/kube-apiserver-client-kubelet`, CN `system:node:<name>`, O `system:nodes`)
//!   with the bootstrap credentials, waits for it to be approved and signed, stores key and
//!   certificate in `<root>/pki/kubelet-client-<time>.pem` (mode 0600) behind the
//!   `kubelet-client-current.pem` symlink, and writes `--kubeconfig` pointing at it.
//! - Rotation: at a random point between 70 % and 90 % of the certificate's lifetime a new key and
//!   CSR are sent with the current certificate; the new pair is stored and swapped into the
//!   client in place — no restart, no pod touched.

use crate::clock;
use crate::fsutil;
use crate::kube::client::{escape, ApiClient, ApiError};
use crate::kube::kubeconfig::{self, Connection};
use crate::kube::pki::{self, KeyPair};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
const CURRENT: &str = "kubelet-client-current.pem";
const MIN_ROTATION_INTERVAL: Duration = Duration::from_secs(5);

/// Which certificate a CSR is for: the client one (TLS bootstrap) or the node API's serving one
/// (`--rotate-server-certificates`, the kubelet's serverTLSBootstrap).
pub struct CertKind {
    /// Files are `<root>/pki/<prefix>-<time>.pem` behind `<prefix>-current.pem`.
    pub prefix: &'static str,
    pub signer: &'static str,
    pub usages: &'static [&'static str],
    /// subjectAltNames (serving certificates only).
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
}

impl CertKind {
    pub fn client() -> CertKind {
        CertKind {
            prefix: "kubelet-client",
            signer: SIGNER,
            usages: &["digital signature", "client auth"],
            dns: Vec::new(),
            ips: Vec::new(),
        }
    }

    /// As the kubelet asks for an ECDSA serving certificate: no key encipherment.
    pub fn serving(dns: Vec<String>, ips: Vec<std::net::IpAddr>) -> CertKind {
        CertKind {
            prefix: "kubelet-server",
            signer: SERVING_SIGNER,
            usages: &["digital signature", "server auth"],
            dns,
            ips,
        }
    }

    fn current(&self) -> String {
        format!("{}-current.pem", self.prefix)
    }
}

pub fn pki_dir(root: &Path) -> PathBuf {
    root.join("pki")
}

/// A kubeconfig whose client certificate can be used now (present, readable, not expired).
pub fn usable(kubeconfig: &Path) -> bool {
    let Ok(conn) = kubeconfig::load(kubeconfig) else {
        return false;
    };
    match &conn.client_cert_pem {
        None => conn.token.is_some() || conn.token_file.is_some(),
        Some(pem) => cert_valid_until(pem).is_some_and(|t| t > clock::now_unix().as_secs()),
    }
}

fn cert_valid_until(pem: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(pem).ok()?;
    pki::parse_cert_pem(text).ok()?.first().map(|c| c.not_after)
}

/// Runs the bootstrap: CSR with the bootstrap credentials, then writes `kubeconfig`. Retries
/// (with back-off) until a certificate is issued; a denied request is an error.
pub fn bootstrap(
    bootstrap_kubeconfig: &Path,
    kubeconfig: &Path,
    root: &Path,
    node_name: &str,
) -> Result<(), String> {
    let conn = kubeconfig::load(bootstrap_kubeconfig)?;
    let client = ApiClient::new(conn.clone())?;
    log::info!(
        "TLS bootstrap: requesting a client certificate for node {} from {}",
        node_name,
        conn.server
    );
    let dir = pki_dir(root);
    fsutil::ensure_dir(&dir).map_err(|e| format!("{}: {}", dir.display(), e))?;
    let mut delay = super::RetryDelay::default();
    let (cert_pem, key_pem) = loop {
        match request_certificate(&client, node_name, &CertKind::client()) {
            Ok(pair) => break pair,
            Err(Failure::Denied(m)) => return Err(format!("TLS bootstrap: {}", m)),
            Err(Failure::Retry(m)) => {
                let d = delay.failed();
                log::warn!("TLS bootstrap: {}; retrying in {:?}", m, d);
                std::thread::sleep(d);
            }
        }
    };
    let current = store_pair(&dir, &CertKind::client(), &cert_pem, &key_pem)?;
    let text = kubeconfig::render_with_client_cert(
        &conn.server,
        conn.ca_pem.as_deref(),
        conn.tls_server_name.as_deref(),
        &current,
        &current,
    );
    if let Some(parent) = kubeconfig.parent() {
        fsutil::ensure_dir(parent).map_err(|e| format!("{}: {}", parent.display(), e))?;
    }
    fsutil::write_atomic(kubeconfig, text.as_bytes(), 0o600)
        .map_err(|e| format!("writing {}: {}", kubeconfig.display(), e))?;
    log::info!(
        "TLS bootstrap: client certificate issued; wrote {}",
        kubeconfig.display()
    );
    Ok(())
}

enum Failure {
    Denied(String),
    Retry(String),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Retry(e.to_string())
    }
}

/// One CSR round: a new key, the request, waiting for the certificate (up to 15 minutes, then the
/// caller starts over). Returns (certificate PEM, key PEM).
fn request_certificate(
    client: &ApiClient,
    node_name: &str,
    kind: &CertKind,
) -> Result<(String, String), Failure> {
    let key = KeyPair::generate().map_err(|e| Failure::Retry(e.to_string()))?;
    let cn = format!("system:node:{}", node_name);
    let csr = if kind.dns.is_empty() && kind.ips.is_empty() {
        key.csr_pem(&cn, &["system:nodes"])
    } else {
        key.csr_pem_with_sans(&cn, &["system:nodes"], &kind.dns, &kind.ips)
    }
    .map_err(|e| Failure::Retry(e.to_string()))?;
    let body = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "csr-"},
        "spec": {
            "request": crate::base64::base64_encode(csr.as_bytes()),
            "signerName": kind.signer,
            "usages": kind.usages,
        },
    });
    let created = client.post(
        "/apis/certificates.k8s.io/v1/certificatesigningrequests",
        &body,
    )?;
    let name = created["metadata"]["name"]
        .as_str()
        .ok_or_else(|| Failure::Retry("the created CSR has no name".into()))?
        .to_string();
    log::info!(
        "certificate signing request {} sent; waiting for approval",
        name
    );
    let path = format!(
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/{}",
        escape(&name)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15 * 60);
    let mut csr = created;
    loop {
        if let Some(cert) = issued(&csr)? {
            let certs = pki::parse_cert_pem(&cert).map_err(|e| {
                Failure::Retry(format!("CSR {}: the issued certificate: {}", name, e))
            })?;
            let first = certs
                .first()
                .ok_or_else(|| Failure::Retry(format!("CSR {}: no certificate", name)))?;
            if !pki::key_matches_cert(&key, first) {
                return Err(Failure::Retry(format!(
                    "CSR {}: the issued certificate is not for our key",
                    name
                )));
            }
            return Ok((cert, key.to_pem()));
        }
        if std::time::Instant::now() > deadline {
            return Err(Failure::Retry(format!(
                "CSR {} was not signed within 15 minutes",
                name
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
        csr = client.get(&path)?;
    }
}

/// The certificate of a signed CSR; an error if it was denied or failed.
fn issued(csr: &Value) -> Result<Option<String>, Failure> {
    for c in csr["status"]["conditions"].as_array().into_iter().flatten() {
        let t = c["type"].as_str().unwrap_or_default();
        if (t == "Denied" || t == "Failed") && c["status"] != "False" {
            return Err(Failure::Denied(format!(
                "certificate signing request {} was {}: {}",
                csr["metadata"]["name"].as_str().unwrap_or_default(),
                t.to_lowercase(),
                c["message"].as_str().unwrap_or_default()
            )));
        }
    }
    let Some(b64) = csr["status"]["certificate"]
        .as_str()
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    let pem = crate::base64::base64_decode(b64)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| Failure::Retry("status.certificate is not base64 PEM".into()))?;
    Ok(Some(pem))
}

/// Writes `<prefix>-<time>.pem` (certificate then key, 0600) and points the `current`
/// symlink at it atomically. Returns the symlink's path.
fn store_pair(
    dir: &Path,
    kind: &CertKind,
    cert_pem: &str,
    key_pem: &str,
) -> Result<PathBuf, String> {
    fsutil::ensure_dir(dir).map_err(|e| format!("{}: {}", dir.display(), e))?;
    let stamp = clock::rfc3339(clock::now_unix()).replace(':', "-");
    let file = dir.join(format!("{}-{}.pem", kind.prefix, stamp));
    let mut data = cert_pem.trim_end().to_string();
    data.push('\n');
    data.push_str(key_pem);
    fsutil::write_atomic(&file, data.as_bytes(), 0o600)
        .map_err(|e| format!("writing {}: {}", file.display(), e))?;
    let current = dir.join(kind.current());
    let tmp = dir.join(format!(".{}.tmp", kind.current()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(file.file_name().unwrap_or_default(), &tmp)
        .and_then(|_| std::fs::rename(&tmp, &current))
        .map_err(|e| format!("updating {}: {}", current.display(), e))?;
    Ok(current)
}

/// Rotates the client certificate of `client` (whose kubeconfig points into `<root>/pki`) before
/// it expires, for as long as the agent runs.
pub fn start_rotation(
    client: Arc<ApiClient>,
    root: PathBuf,
    node_name: String,
) -> Result<(), String> {
    let swap = client.clone();
    rotate(
        "cert-rotation",
        client,
        root,
        node_name,
        CertKind::client(),
        move |cert, key| swap.set_client_cert(cert.as_bytes(), key.as_bytes()),
    )
}

/// The serving certificate's file (certificate and key) if one was issued before.
pub fn serving_current(root: &Path) -> PathBuf {
    pki_dir(root).join(CertKind::serving(Vec::new(), Vec::new()).current())
}

/// Keeps the node API's serving certificate issued (a CSR at once when there is none) and
/// rotated; `install` gets each new (certificate, key) PEM pair.
pub fn start_serving_rotation(
    client: Arc<ApiClient>,
    root: PathBuf,
    node_name: String,
    kind: CertKind,
    install: impl Fn(&str, &str) -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    rotate("serving-cert", client, root, node_name, kind, install)
}

fn rotate(
    thread: &str,
    client: Arc<ApiClient>,
    root: PathBuf,
    node_name: String,
    kind: CertKind,
    install: impl Fn(&str, &str) -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    let is_client = kind.signer == SIGNER;
    super::spawn(thread, move || loop {
        let dir = pki_dir(&root);
        let current = std::fs::read(dir.join(kind.current())).unwrap_or_default();
        let wait = match std::str::from_utf8(&current)
            .ok()
            .and_then(|t| pki::parse_cert_pem(t).ok())
            .and_then(|c| c.into_iter().next())
        {
            Some(c) => rotation_delay(
                c.not_before,
                c.not_after,
                clock::now_unix().as_secs(),
                jitter(),
            ),
            None if is_client => {
                log::warn!(
                    "certificate rotation: cannot read {}; trying again in a minute",
                    dir.join(CURRENT).display()
                );
                Duration::from_secs(60)
            }
            // No serving certificate yet: ask for one now.
            None => Duration::ZERO,
        };
        // Never a tight loop, whatever the certificates say (a signer that backdates
        // certificates by more than 70 % of their lifetime would otherwise cause one).
        let wait = if current.is_empty() && !is_client {
            wait
        } else {
            wait.max(MIN_ROTATION_INTERVAL)
        };
        log::info!("{}: rotation in {:?}", kind.prefix, wait);
        std::thread::sleep(wait);
        let mut delay = super::RetryDelay::default();
        let pair = loop {
            match request_certificate(&client, &node_name, &kind) {
                Ok(pair) => break Some(pair),
                Err(Failure::Denied(m)) => {
                    log::error!("certificate rotation: {}", m);
                    break None;
                }
                Err(Failure::Retry(m)) => {
                    let d = delay.failed();
                    log::warn!("certificate rotation: {}; retrying in {:?}", m, d);
                    std::thread::sleep(d);
                }
            }
        };
        let Some((cert, key)) = pair else {
            std::thread::sleep(Duration::from_secs(60));
            continue;
        };
        match store_pair(&dir, &kind, &cert, &key).and_then(|_| install(&cert, &key)) {
            Ok(()) if is_client => log::info!("client certificate rotated"),
            Ok(()) => log::info!("serving certificate issued and installed"),
            Err(e) => log::error!("certificate rotation: {}", e),
        }
    })
}

/// A fraction in [0.7, 0.9).
fn jitter() -> f64 {
    let r = fsutil::random_hex(4)
        .ok()
        .and_then(|h| u32::from_str_radix(&h, 16).ok())
        .unwrap_or(0);
    0.7 + 0.2 * (f64::from(r) / (f64::from(u32::MAX) + 1.0))
}

/// How long until `fraction` of the certificate's lifetime has passed (zero if it has).
fn rotation_delay(not_before: u64, not_after: u64, now: u64, fraction: f64) -> Duration {
    let life = not_after.saturating_sub(not_before) as f64;
    let at = not_before as f64 + life * fraction;
    Duration::from_secs_f64((at - now as f64).max(0.0))
}

/// Whether `conn`'s client certificate lives in tinylet's pki dir (so tinylet may rotate it).
pub fn rotatable(conn: &Connection, root: &Path) -> bool {
    conn.client_cert_file
        .as_ref()
        .is_some_and(|f| f.starts_with(pki_dir(root)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_happens_between_70_and_90_percent() {
        assert_eq!(
            rotation_delay(1000, 2000, 1000, 0.7),
            Duration::from_secs(700)
        );
        assert_eq!(
            rotation_delay(1000, 2000, 1500, 0.8),
            Duration::from_secs(300)
        );
        assert_eq!(rotation_delay(1000, 2000, 5000, 0.8), Duration::ZERO);
        for _ in 0..100 {
            let j = jitter();
            assert!((0.7..0.9).contains(&j), "{}", j);
        }
    }

    #[test]
    fn denied_requests_are_final() {
        let csr = json!({"metadata": {"name": "csr-1"}, "status": {"conditions": [
            {"type": "Denied", "status": "True", "message": "not a node"}]}});
        assert!(matches!(issued(&csr), Err(Failure::Denied(m)) if m.contains("not a node")));
        let pending = json!({"metadata": {"name": "csr-1"}, "status": {}});
        assert!(matches!(issued(&pending), Ok(None)));
    }
}

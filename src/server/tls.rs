//! The node API's TLS: the serving certificate (from `--tls-cert-file`/`--tls-private-key-file`,
//! issued through a `kubernetes.io/kubelet-serving` CSR, or self-signed in
//! `<root>/pki/kubelet.crt|key` as the kubelet makes it), swappable while the server runs, and
//! client certificates verified against `--client-ca-file` when a client offers one (asked
//! for, never required: bearer tokens come without one).

use crate::kube::{pki, x509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate the server presents; empty until one is installed (while a serving CSR
/// waits for approval, handshakes fail as the kubelet's do).
#[derive(Default)]
pub struct ServingCert {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("ServingCert")
    }
}

impl ServingCert {
    /// Installs a certificate chain (leaf first) and its key, both PEM.
    pub fn install(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("serving certificate: {}", e))?;
        if certs.is_empty() {
            return Err("serving certificate: no CERTIFICATE block".into());
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("serving key: {}", e))?;
        let key = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| format!("serving key: {}", e))?;
        let certified = CertifiedKey::new(certs, key);
        certified
            .keys_match()
            .map_err(|e| format!("serving certificate and key do not match: {}", e))?;
        if let Ok(mut c) = self.current.write() {
            *c = Some(Arc::new(certified));
        }
        Ok(())
    }

    pub fn is_set(&self) -> bool {
        self.current.read().is_ok_and(|c| c.is_some())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().and_then(|c| c.clone())
    }
}

/// The server's TLS settings: TLS 1.2 and 1.3, HTTP/1.1 only, client certificates checked
/// against `client_ca` (PEM bundle) when one is sent.
pub fn server_config(
    client_ca: Option<&Path>,
    cert: Arc<ServingCert>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {}", e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("--client-ca-file {}: {}", path.display(), e))?;
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| format!("--client-ca-file {}: {}", path.display(), e))?;
                roots
                    .add(c)
                    .map_err(|e| format!("--client-ca-file {}: {}", path.display(), e))?;
            }
            if roots.is_empty() {
                return Err(format!(
                    "--client-ca-file {}: no CERTIFICATE in it",
                    path.display()
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("--client-ca-file {}: {}", path.display(), e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `<root>/pki/kubelet.crt|key`: reused while valid, else made anew (a CA and a leaf for the
/// node's name, `localhost`, 127.0.0.1 and the node's IP, valid a year). Returns (cert, key) PEM.
pub fn self_signed(
    root: &Path,
    node_name: &str,
    node_ip: Option<&str>,
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let dir = root.join("pki");
    let (crt, key) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
    let now = crate::clock::now_unix().as_secs();
    if let (Ok(c), Ok(k)) = (std::fs::read(&crt), std::fs::read(&key)) {
        let valid = std::str::from_utf8(&c)
            .ok()
            .and_then(|t| pki::parse_cert_pem(t).ok())
            .and_then(|certs| certs.into_iter().next())
            .is_some_and(|leaf| leaf.not_after > now);
        if valid {
            return Ok((c, k));
        }
        log::info!("{} has expired; making a new one", crt.display());
    }
    let mut dns = vec![node_name.to_string()];
    if node_name != "localhost" {
        dns.push("localhost".into());
    }
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    if let Some(ip) = node_ip.and_then(|s| s.parse::<IpAddr>().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let (cert_pem, key_pem) = x509::self_signed_serving(node_name, &dns, &ips, now, 365)
        .map_err(|e| format!("making a self-signed serving certificate: {}", e))?;
    crate::fsutil::ensure_dir(&dir).map_err(|e| format!("{}: {}", dir.display(), e))?;
    crate::fsutil::write_atomic(&key, key_pem.as_bytes(), 0o600)
        .map_err(|e| format!("writing {}: {}", key.display(), e))?;
    crate::fsutil::write_atomic(&crt, cert_pem.as_bytes(), 0o644)
        .map_err(|e| format!("writing {}: {}", crt.display(), e))?;
    log::info!(
        "node API: self-signed serving certificate written to {}",
        crt.display()
    );
    Ok((cert_pem.into_bytes(), key_pem.into_bytes()))
}

/// The subject of a verified client certificate: (common name, organizations) — the user and
/// groups of the kubelet's x509 authenticator.
pub fn client_identity(cert: &CertificateDer) -> Option<(String, Vec<String>)> {
    let info = pki::cert_info_der(cert.as_ref()).ok()?;
    Some((info.subject_cn.unwrap_or_default(), info.subject_o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_files_are_made_once_and_reused() {
        let root = std::env::temp_dir().join(format!(
            "tinylet-tls-{}-{}",
            std::process::id(),
            crate::fsutil::random_hex(4).unwrap()
        ));
        let (c1, k1) = self_signed(&root, "edge-1", Some("10.1.2.3")).unwrap();
        let (c2, _) = self_signed(&root, "edge-1", Some("10.1.2.3")).unwrap();
        assert_eq!(c1, c2);
        let cert = ServingCert::default();
        assert!(!cert.is_set());
        cert.install(&c1, &k1).unwrap();
        assert!(cert.is_set());
        let other = x509::self_signed_serving("x", &["x".into()], &[], 1_700_000_000, 1).unwrap();
        let err = cert.install(&c1, other.1.as_bytes()).unwrap_err();
        assert!(err.contains("do not match"), "{}", err);
        assert!(server_config(None, Arc::new(cert)).is_ok());
        let leaf = CertificateDer::pem_slice_iter(&c1).next().unwrap().unwrap();
        let (cn, orgs) = client_identity(&leaf).unwrap();
        assert!(cn.starts_with("edge-1@"), "{}", cn);
        assert!(orgs.is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }
}

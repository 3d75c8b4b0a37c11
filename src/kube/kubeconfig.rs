//! The standard kubeconfig file (clientcmd's v1 Config): clusters, users, contexts and
//! current-context, resolved to the one set of connection settings tinylet uses.
//!
//! Relative file paths in the file are relative to the file's directory, as clientcmd resolves
//! them. `insecure-skip-tls-verify` is honoured only when the file says so, with a warning.

use crate::base64::base64_decode;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Where and how to reach the API server.
#[derive(Clone, Default)]
pub struct Connection {
    /// `https://host:port` (no trailing slash; a path prefix is kept).
    pub server: String,
    /// PEM of the CA bundle that verifies the server; `None` means the built-in web roots.
    pub ca_pem: Option<Vec<u8>>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    /// Paths of the client cert and key when they came from files (they are re-read on rotation).
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// The name the server's certificate is checked against instead of the URL's host.
    pub tls_server_name: Option<String>,
    pub insecure_skip_tls_verify: bool,
}

impl std::fmt::Debug for Connection {
    // Never print credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.server)
            .field("client_cert", &self.client_cert_pem.is_some())
            .field(
                "token",
                &(self.token.is_some() || self.token_file.is_some()),
            )
            .field("tls_server_name", &self.tls_server_name)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .finish()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct KubeConfigFile {
    #[serde(default)]
    clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    users: Vec<Named<User>>,
    #[serde(default)]
    contexts: Vec<Named<Context>>,
    #[serde(default)]
    current_context: String,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    value: Option<T>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<String>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    tls_server_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate: Option<String>,
    client_certificate_data: Option<String>,
    client_key: Option<String>,
    client_key_data: Option<String>,
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<String>,
    username: Option<String>,
    exec: Option<serde_json::Value>,
    #[serde(rename = "auth-provider")]
    auth_provider: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct Context {
    cluster: String,
    #[serde(default)]
    user: String,
}

/// Reads and resolves a kubeconfig file.
pub fn load(path: &Path) -> Result<Connection, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading kubeconfig {}: {}", path.display(), e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).map_err(|e| format!("kubeconfig {}: {}", path.display(), e))
}

/// Resolves a kubeconfig's text; `base` is the directory relative paths are taken from.
pub fn parse(text: &str, base: &Path) -> Result<Connection, String> {
    let docs = crate::kube::yaml::documents(text)?;
    let doc = docs
        .into_iter()
        .find(|d| !d.is_null())
        .ok_or("the file is empty")?;
    let file: KubeConfigFile = serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        format!("{}: {}", path, e.into_inner())
    })?;
    let context = if file.current_context.is_empty() {
        // clientcmd falls back to the only context there is.
        match file.contexts.as_slice() {
            [one] => one,
            [] => return Err("no contexts".into()),
            _ => return Err("current-context is not set and there are several contexts".into()),
        }
    } else {
        file.contexts
            .iter()
            .find(|c| c.name == file.current_context)
            .ok_or_else(|| format!("current-context {:?} is not defined", file.current_context))?
    };
    let ctx = context
        .value
        .as_ref()
        .ok_or_else(|| format!("context {:?} has no body", context.name))?;
    let cluster = file
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.value.as_ref())
        .ok_or_else(|| {
            format!(
                "context {:?}: cluster {:?} is not defined",
                context.name, ctx.cluster
            )
        })?;
    let default_user = User::default();
    let user = if ctx.user.is_empty() {
        &default_user
    } else {
        file.users
            .iter()
            .find(|u| u.name == ctx.user)
            .and_then(|u| u.value.as_ref())
            .ok_or_else(|| {
                format!(
                    "context {:?}: user {:?} is not defined",
                    context.name, ctx.user
                )
            })?
    };
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(format!(
            "user {:?}: exec and auth-provider plugins are not supported; use a client certificate or a token",
            ctx.user
        ));
    }
    if user.username.is_some() {
        return Err(format!(
            "user {:?}: basic authentication is not supported by Kubernetes any more; use a client certificate or a token",
            ctx.user
        ));
    }

    let server = cluster.server.trim_end_matches('/').to_string();
    if server.is_empty() {
        return Err(format!("cluster {:?}: server is empty", ctx.cluster));
    }
    if !server.starts_with("https://") && !server.starts_with("http://") {
        return Err(format!(
            "cluster {:?}: server {:?} is not an http(s) URL",
            ctx.cluster, server
        ));
    }
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let read = |what: &str, p: &PathBuf| -> Result<Vec<u8>, String> {
        std::fs::read(p).map_err(|e| format!("{} {}: {}", what, p.display(), e))
    };
    let data = |what: &str, b64: &str| -> Result<Vec<u8>, String> {
        base64_decode(b64.trim()).ok_or_else(|| format!("{}: not valid base64", what))
    };

    let ca_pem = match (
        &cluster.certificate_authority_data,
        &cluster.certificate_authority,
    ) {
        (Some(d), _) if !d.is_empty() => Some(data("certificate-authority-data", d)?),
        (_, Some(f)) if !f.is_empty() => Some(read("certificate-authority", &resolve(f))?),
        _ => None,
    };
    let mut conn = Connection {
        server,
        ca_pem,
        tls_server_name: cluster.tls_server_name.clone().filter(|s| !s.is_empty()),
        insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
        ..Default::default()
    };
    if conn.insecure_skip_tls_verify && conn.ca_pem.is_some() {
        // clientcmd's validation refuses this combination.
        return Err(format!(
            "cluster {:?}: certificate-authority and insecure-skip-tls-verify are mutually exclusive",
            ctx.cluster
        ));
    }
    match (&user.client_certificate_data, &user.client_certificate) {
        (Some(d), _) if !d.is_empty() => {
            conn.client_cert_pem = Some(data("client-certificate-data", d)?)
        }
        (_, Some(f)) if !f.is_empty() => {
            let p = resolve(f);
            conn.client_cert_pem = Some(read("client-certificate", &p)?);
            conn.client_cert_file = Some(p);
        }
        _ => {}
    }
    match (&user.client_key_data, &user.client_key) {
        (Some(d), _) if !d.is_empty() => conn.client_key_pem = Some(data("client-key-data", d)?),
        (_, Some(f)) if !f.is_empty() => {
            let p = resolve(f);
            conn.client_key_pem = Some(read("client-key", &p)?);
            conn.client_key_file = Some(p);
        }
        _ => {}
    }
    if conn.client_cert_pem.is_some() != conn.client_key_pem.is_some() {
        return Err(format!(
            "user {:?}: a client certificate needs its key (and a key its certificate)",
            ctx.user
        ));
    }
    conn.token = user.token.clone().filter(|t| !t.is_empty());
    if conn.token.is_none() {
        conn.token_file = user
            .token_file
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(resolve);
    }
    Ok(conn)
}

/// A kubeconfig for `server` with a client certificate and key in files (what TLS bootstrap
/// writes under the root dir, as the kubelet writes its kubeconfig).
pub fn render_with_client_cert(
    server: &str,
    ca_pem: Option<&[u8]>,
    tls_server_name: Option<&str>,
    cert_file: &Path,
    key_file: &Path,
) -> String {
    use crate::base64::base64_encode;
    let mut cluster = format!("    server: {}\n", yaml_str(server));
    if let Some(ca) = ca_pem {
        cluster.push_str(&format!(
            "    certificate-authority-data: {}\n",
            base64_encode(ca)
        ));
    }
    if let Some(n) = tls_server_name {
        cluster.push_str(&format!("    tls-server-name: {}\n", yaml_str(n)));
    }
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: default-cluster\n  cluster:\n{cluster}\
         users:\n- name: default-auth\n  user:\n    client-certificate: {}\n    client-key: {}\n\
         contexts:\n- name: default-context\n  context:\n    cluster: default-cluster\n    user: default-auth\n\
         current-context: default-context\n",
        yaml_str(&cert_file.display().to_string()),
        yaml_str(&key_file.display().to_string()),
    )
}

/// A double-quoted YAML scalar (JSON string syntax is valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: a
  cluster:
    server: https://10.0.0.1:6443/
    certificate-authority-data: aGVsbG8=
    tls-server-name: kubernetes
- name: b
  cluster:
    server: https://b:6443
    insecure-skip-tls-verify: true
users:
- name: node
  user:
    client-certificate: certs/node.crt
    client-key: /abs/node.key
- name: tok
  user:
    token: s3cret
contexts:
- name: ca
  context: {cluster: a, user: node}
- name: cb
  context: {cluster: b, user: tok}
current-context: cb
"#;

    #[test]
    fn resolves_the_current_context() {
        let c = parse(CONFIG, Path::new("/etc/k")).unwrap();
        assert_eq!(c.server, "https://b:6443");
        assert!(c.insecure_skip_tls_verify);
        assert_eq!(c.token.as_deref(), Some("s3cret"));
        assert!(c.ca_pem.is_none());
        // Credentials never reach logs.
        assert!(!format!("{:?}", c).contains("s3cret"));
    }

    #[test]
    fn reads_files_relative_to_the_kubeconfig() {
        let text = CONFIG.replace("current-context: cb", "current-context: ca");
        let err = parse(&text, Path::new("/nonexistent-dir")).unwrap_err();
        assert!(
            err.contains("client-certificate /nonexistent-dir/certs/node.crt"),
            "{}",
            err
        );
        let dir = std::env::temp_dir().join(format!("kc-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        std::fs::write(dir.join("certs/node.crt"), "CERT").unwrap();
        let text = text.replace("/abs/node.key", "node.key");
        std::fs::write(dir.join("node.key"), "KEY").unwrap();
        let c = parse(&text, &dir).unwrap();
        assert_eq!(c.server, "https://10.0.0.1:6443");
        assert_eq!(c.ca_pem.as_deref(), Some(&b"hello"[..]));
        assert_eq!(c.tls_server_name.as_deref(), Some("kubernetes"));
        assert_eq!(c.client_cert_pem.as_deref(), Some(&b"CERT"[..]));
        assert_eq!(c.client_key_file, Some(dir.join("node.key")));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn clear_errors_for_broken_files() {
        for (text, want) in [
            ("", "empty"),
            ("current-context: x\ncontexts: []", "current-context \"x\" is not defined"),
            (
                "contexts:\n- name: c\n  context: {cluster: nope}\n",
                "cluster \"nope\" is not defined",
            ),
            (
                "clusters:\n- name: c\n  cluster: {server: 'ftp://x'}\ncontexts:\n- name: c\n  context: {cluster: c}\n",
                "not an http(s) URL",
            ),
            (
                "clusters:\n- name: c\n  cluster: {server: 'https://x'}\nusers:\n- name: u\n  user: {exec: {command: aws}}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n",
                "exec and auth-provider plugins are not supported",
            ),
            ("clusters: 7", "clusters"),
        ] {
            let err = parse(text, Path::new("/")).unwrap_err();
            assert!(err.contains(want), "{:?}: {}", text, err);
        }
    }

    #[test]
    fn rendered_kubeconfigs_parse_back() {
        let text = render_with_client_cert(
            "https://127.0.0.1:6443",
            Some(b"CA PEM"),
            None,
            Path::new("/var/lib/tinylet/pki/kubelet-client-current.pem"),
            Path::new("/var/lib/tinylet/pki/kubelet-client-current.pem"),
        );
        let err = parse(&text, Path::new("/")).unwrap_err();
        // It resolved everything up to reading the (absent) certificate file.
        assert!(err.contains("kubelet-client-current.pem"), "{}", err);
    }
}

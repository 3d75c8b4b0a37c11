//! One repository on one endpoint: builds the URLs, picks the scheme (HTTPS, or HTTP after a
//! failed HTTPS attempt where allowed), answers auth challenges with each credential in turn,
//! and turns error statuses into typed errors.

use ureq::http::Response;
use ureq::Body;

use super::auth::{Answer, Authenticator};
use super::challenge;
use super::credentials::{self, Credential};
use super::endpoint::{Endpoint, Scheme};
use super::transport::{NetErrorKind, Transport};
use super::{PullOptions, Target};
use crate::image::{ImageError, ImageStore};

const MAX_ERROR_BODY: u64 = 64 << 10;

pub(crate) struct Client<'a> {
    transport: &'a Transport,
    auth: Authenticator<'a>,
    endpoint: Endpoint,
    target: &'a Target,
    credentials: Vec<Credential>,
    /// The Authorization value that last worked; sent up front on later requests.
    authorization: Option<String>,
    /// Set once a scheme has answered, so the HTTPS probe happens once per pull.
    scheme: Option<&'static str>,
}

impl<'a> Client<'a> {
    pub(crate) fn new(
        transport: &'a Transport,
        store: &'a ImageStore,
        endpoint: Endpoint,
        target: &'a Target,
        opts: &PullOptions,
    ) -> Result<Client<'a>, ImageError> {
        let credentials = credentials::for_host(&endpoint.host, opts)?;
        let auth = Authenticator {
            transport,
            cache: &store.tokens,
            registry: endpoint.host.clone(),
            scope: format!("repository:{}:pull", target.repository),
        };
        // A token from an earlier pull saves the 401 round trip.
        let authorization = credentials
            .iter()
            .map(Some)
            .chain([None])
            .find_map(|c| auth.cached(c));
        let scheme = match endpoint.scheme {
            Scheme::Https => Some("https"),
            Scheme::Http => Some("http"),
            Scheme::HttpsThenHttp => None,
        };
        Ok(Client {
            transport,
            auth,
            endpoint,
            target,
            credentials,
            authorization,
            scheme,
        })
    }

    pub(crate) fn host(&self) -> &str {
        &self.endpoint.host
    }

    pub(crate) fn registry_error(&self, message: impl Into<String>) -> ImageError {
        ImageError::Registry {
            reference: self.target.name.clone(),
            registry: self.endpoint.host.clone(),
            message: message.into(),
        }
    }

    /// GETs `<kind>/<object>` (kind: "manifests" or "blobs"), authenticating as needed, and
    /// returns a 2xx response; other statuses become errors.
    pub(crate) fn get(
        &mut self,
        kind: &str,
        object: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response<Body>, ImageError> {
        let first = self.authorization.clone();
        let resp = self.send(kind, object, headers, first.as_deref())?;
        if resp.status().as_u16() != 401 {
            return self.check(resp, kind, object);
        }
        let challenges: Vec<challenge::Challenge> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(challenge::parse)
            .collect();
        let candidates: Vec<Option<Credential>> = self
            .credentials
            .iter()
            .cloned()
            .map(Some)
            .chain([None])
            .collect();
        let mut status = 401;
        for cred in candidates {
            let header = match self
                .auth
                .answer(&challenges, cred.as_ref())
                .map_err(|m| self.registry_error(m))?
            {
                Answer::Header(h) => h,
                Answer::Refused => continue,
            };
            let resp = self.send(kind, object, headers, Some(&header))?;
            match resp.status().as_u16() {
                s @ (401 | 403) => status = s,
                _ => {
                    self.authorization = Some(header);
                    return self.check(resp, kind, object);
                }
            }
        }
        Err(self.unauthorized(status))
    }

    fn unauthorized(&self, status: u16) -> ImageError {
        ImageError::Unauthorized {
            reference: self.target.name.clone(),
            registry: self.endpoint.host.clone(),
            repository: self.target.repository.clone(),
            status,
        }
    }

    fn send(
        &mut self,
        kind: &str,
        object: &str,
        headers: &[(&str, &str)],
        authorization: Option<&str>,
    ) -> Result<Response<Body>, ImageError> {
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if let Some(a) = authorization {
            all.push(("Authorization", a));
        }
        let schemes: &[&'static str] = match self.scheme {
            Some("http") => &["http"],
            Some(_) => &["https"],
            None => &["https", "http"],
        };
        let mut last = None;
        for &scheme in schemes {
            let url = self
                .endpoint
                .url(scheme, &self.target.repository, kind, object);
            match self.transport.get(&url, &all) {
                Ok(resp) => {
                    self.scheme = Some(scheme);
                    return Ok(resp);
                }
                // Fall back only when nothing speaking TLS answered; a certificate problem is
                // reported as such, not hidden behind an HTTP attempt.
                Err(e)
                    if scheme == "https"
                        && self.scheme.is_none()
                        && matches!(e.kind, NetErrorKind::Connect | NetErrorKind::Tls) =>
                {
                    log::info!(
                        "{}: HTTPS failed ({}); trying plain HTTP (insecure or loopback registry)",
                        self.endpoint.host,
                        e.message
                    );
                    last = Some(e.message);
                }
                Err(e) => return Err(self.registry_error(e.message)),
            }
        }
        Err(self.registry_error(last.unwrap_or_default()))
    }

    fn check(
        &self,
        resp: Response<Body>,
        kind: &str,
        object: &str,
    ) -> Result<Response<Body>, ImageError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let code = status.as_u16();
        if code == 403 {
            return Err(self.unauthorized(code));
        }
        if code == 404 && kind == "manifests" {
            return Err(ImageError::NotFoundInRegistry {
                reference: self.target.name.clone(),
                registry: self.endpoint.host.clone(),
            });
        }
        let detail = error_detail(resp);
        let what = if kind == "blobs" {
            format!("blob {object}")
        } else {
            format!("manifest {object}")
        };
        let hint = if code == 429 {
            " (rate limited; retry later or use a mirror)"
        } else {
            ""
        };
        Err(self.registry_error(format!(
            "{what}: {code} {}{detail}{hint}",
            status.canonical_reason().unwrap_or("")
        )))
    }
}

/// The distribution error body's first code and message, if any: ": MANIFEST_UNKNOWN (...)".
fn error_detail(resp: Response<Body>) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let body = resp
        .into_body()
        .with_config()
        .limit(MAX_ERROR_BODY)
        .read_to_vec()
        .unwrap_or_default();
    match serde_json::from_slice::<Errors>(&body) {
        Ok(e) => e
            .errors
            .first()
            .map(|e| {
                format!(
                    ": {} ({})",
                    e.code,
                    e.message.chars().take(200).collect::<String>()
                )
            })
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

//! Answering a registry's 401: `Basic` challenges get the credential as-is; `Bearer` challenges
//! send us to the token service (`realm?service=..&scope=repository:<repo>:pull`, with Basic
//! credentials when we have them) for a `token` / `access_token`. Tokens are cached per
//! (registry, scope, credential) until `expires_in` runs out — the credential is part of the key
//! because two pods' pull secrets must never share a token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::challenge::Challenge;
use super::credentials::Credential;
use super::transport::Transport;

/// Lifetime the token spec prescribes when `expires_in` is absent.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire, so a request never carries a dying one.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    registry: String,
    scope: String,
    /// sha256 of the credential (never the credential itself); "" for anonymous.
    credential: String,
}

/// Bearer tokens shared by the pulls of one store (the daemon's life).
#[derive(Default)]
pub(crate) struct TokenCache(Mutex<HashMap<Key, (String, Instant)>>);

impl TokenCache {
    fn get(&self, key: &Key) -> Option<String> {
        let map = self.0.lock().ok()?;
        map.get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(t, _)| t.clone())
    }

    fn put(&self, key: Key, token: String, lifetime: Duration) {
        if let Ok(mut map) = self.0.lock() {
            let now = Instant::now();
            map.retain(|_, (_, expires)| *expires > now);
            map.insert(key, (token, now + lifetime.saturating_sub(EXPIRY_MARGIN)));
        }
    }
}

/// What answering a challenge with one credential (or anonymously) produced.
pub(crate) enum Answer {
    /// The Authorization header value to retry with.
    Header(String),
    /// The credential was refused (token service said 401/403, or Basic without credentials).
    Refused,
}

pub(crate) struct Authenticator<'a> {
    pub transport: &'a Transport,
    pub cache: &'a TokenCache,
    /// The endpoint's host[:port]: the cache key's registry.
    pub registry: String,
    /// "repository:<repo>:pull".
    pub scope: String,
}

impl Authenticator<'_> {
    /// A cached bearer header for this credential, if one is still fresh.
    pub(crate) fn cached(&self, cred: Option<&Credential>) -> Option<String> {
        self.cache
            .get(&self.key(cred))
            .map(|t| format!("Bearer {t}"))
    }

    /// Answers the first challenge we understand. Err is a message for a registry error (the
    /// token service failed in a way that is not about the credential).
    pub(crate) fn answer(
        &self,
        challenges: &[Challenge],
        cred: Option<&Credential>,
    ) -> Result<Answer, String> {
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            return self.bearer(c, cred);
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return Ok(match cred {
                Some(c) => Answer::Header(c.basic()),
                None => Answer::Refused,
            });
        }
        Err(format!(
            "401 Unauthorized with no usable challenge (schemes: {})",
            challenges
                .iter()
                .map(|c| c.scheme.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    fn bearer(&self, challenge: &Challenge, cred: Option<&Credential>) -> Result<Answer, String> {
        let key = self.key(cred);
        if let Some(t) = self.cache.get(&key) {
            return Ok(Answer::Header(format!("Bearer {t}")));
        }
        let realm = challenge
            .params
            .get("realm")
            .filter(|r| r.starts_with("https://") || r.starts_with("http://"))
            .ok_or("the Bearer challenge has no http(s) realm")?;
        let mut url = realm.clone();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        if let Some(service) = challenge.params.get("service") {
            url.push_str(&format!("{sep}service={}", query_escape(service)));
            sep = '&';
        }
        url.push_str(&format!("{sep}scope={}", query_escape(&self.scope)));
        let basic = cred.map(Credential::basic);
        let headers: Vec<(&str, &str)> = basic
            .as_deref()
            .map(|b| ("Authorization", b))
            .into_iter()
            .collect();
        // The realm may be another host (auth.docker.io); never log the URL's response.
        let resp = self.transport.get(&url, &headers).map_err(|e| {
            format!(
                "token service {}: {}",
                super::transport::host_of(&url),
                e.message
            )
        })?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Ok(Answer::Refused);
        }
        if status != 200 {
            return Err(format!(
                "token service {} answered {status}",
                super::transport::host_of(&url)
            ));
        }
        let body = resp
            .into_body()
            .with_config()
            .limit(MAX_TOKEN_RESPONSE)
            .read_to_vec()
            .map_err(|e| format!("reading the token service's answer: {e}"))?;
        let t: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| format!("the token service's answer is not a token: {e}"))?;
        let token = t
            .token
            .filter(|t| !t.is_empty())
            .or(t.access_token.filter(|t| !t.is_empty()))
            .ok_or("the token service's answer holds no token")?;
        let lifetime = t
            .expires_in
            .filter(|s| *s > 0)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        self.cache.put(key, token.clone(), lifetime);
        Ok(Answer::Header(format!("Bearer {token}")))
    }

    fn key(&self, cred: Option<&Credential>) -> Key {
        let credential = cred.map_or(String::new(), |c| {
            let mut h = Sha256::new();
            h.update(c.username.as_bytes());
            h.update([0]);
            h.update(c.password.as_bytes());
            h.finalize().iter().map(|b| format!("{b:02x}")).collect()
        });
        Key {
            registry: self.registry.clone(),
            scope: self.scope.clone(),
            credential,
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
pub(crate) fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_query_values() {
        assert_eq!(
            query_escape("repository:library/nginx:pull"),
            "repository%3Alibrary%2Fnginx%3Apull"
        );
        assert_eq!(query_escape("registry.docker.io"), "registry.docker.io");
    }

    #[test]
    fn cache_expires_and_separates_credentials() {
        let transport = Transport::new(&[]).unwrap();
        let cache = TokenCache::default();
        let auth = Authenticator {
            transport: &transport,
            cache: &cache,
            registry: "r".into(),
            scope: "repository:a:pull".into(),
        };
        let alice = Credential {
            username: "alice".into(),
            password: "pw".into(),
        };
        cache.put(
            auth.key(Some(&alice)),
            "t1".into(),
            Duration::from_secs(300),
        );
        assert_eq!(auth.cached(Some(&alice)).as_deref(), Some("Bearer t1"));
        assert_eq!(auth.cached(None), None);
        // Shorter than the margin: already expired.
        cache.put(auth.key(None), "t2".into(), Duration::from_secs(5));
        assert_eq!(auth.cached(None), None);
    }
}

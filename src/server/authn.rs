//! Who is calling: the kubelet's authenticators in their order — a client certificate verified
//! against `--client-ca-file` (user = CN, groups = O), else a bearer token checked with a
//! TokenReview at the API server (`--authentication-token-webhook`), else, only with
//! `--anonymous-auth`, `system:anonymous`. A token that the API server rejects is a 401 even
//! with anonymous access on (as the apiserver library fails on an authenticator's error
//! before trying anonymous). Tokens are never logged and are cached by their SHA-256 only.

use super::cache::TtlCache;
use super::Reviewer;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The kubelet's authentication.webhook.cacheTTL default.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    fn new(name: String, groups: Vec<String>) -> User {
        User {
            name,
            uid: String::new(),
            groups,
            extra: BTreeMap::new(),
        }
    }
}

pub struct Authenticator {
    pub anonymous: bool,
    /// The API server that reviews bearer tokens (None: tokens are not accepted).
    pub webhook: Option<Arc<dyn Reviewer>>,
    cache: TtlCache<[u8; 32], Option<User>>,
}

impl Authenticator {
    pub fn new(anonymous: bool, webhook: Option<Arc<dyn Reviewer>>) -> Authenticator {
        Authenticator {
            anonymous,
            webhook,
            cache: TtlCache::new(1024),
        }
    }

    /// The caller, or None (401). `client_cert` is the verified certificate's (CN, O).
    pub fn authenticate(
        &self,
        client_cert: Option<(String, Vec<String>)>,
        authorization: Option<&str>,
    ) -> Option<User> {
        if let Some((cn, orgs)) = client_cert {
            if !cn.is_empty() {
                let mut groups = orgs;
                groups.push("system:authenticated".into());
                return Some(User::new(cn, groups));
            }
        }
        let token = authorization
            .and_then(|a| a.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty());
        if let (Some(token), Some(webhook)) = (token, &self.webhook) {
            return self.review_token(webhook.as_ref(), token);
        }
        self.anonymous.then(|| {
            User::new(
                "system:anonymous".into(),
                vec!["system:unauthenticated".into()],
            )
        })
    }

    fn review_token(&self, webhook: &dyn Reviewer, token: &str) -> Option<User> {
        use sha2::Digest;
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(cached) = self.cache.get(&key) {
            return cached;
        }
        let review = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        });
        let answer = match webhook.create("/apis/authentication.k8s.io/v1/tokenreviews", &review) {
            Ok(a) => a,
            Err(e) => {
                // Not cached: the next request asks again.
                log::warn!("node API: TokenReview failed: {}", e);
                return None;
            }
        };
        let user = user_of_review(&answer);
        if user.is_none() {
            if let Some(err) = answer["status"]["error"].as_str().filter(|e| !e.is_empty()) {
                log::info!("node API: token rejected: {}", err);
            }
        }
        self.cache.put(key, user.clone(), TOKEN_CACHE_TTL);
        user
    }
}

fn user_of_review(review: &Value) -> Option<User> {
    let st = &review["status"];
    if st["authenticated"] != true {
        return None;
    }
    let u = &st["user"];
    let name = u["username"].as_str().filter(|n| !n.is_empty())?;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let mut extra = BTreeMap::new();
    for (k, v) in u["extra"].as_object().into_iter().flatten() {
        extra.insert(k.clone(), strings(v));
    }
    Some(User {
        name: name.to_string(),
        uid: u["uid"].as_str().unwrap_or_default().to_string(),
        groups: strings(&u["groups"]),
        extra,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers TokenReviews: "good" is alice, anything else is not authenticated.
    #[derive(Default)]
    struct FakeApi {
        calls: Mutex<Vec<Value>>,
    }

    impl Reviewer for FakeApi {
        fn create(&self, path: &str, body: &Value) -> Result<Value, String> {
            assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews");
            self.calls.lock().unwrap().push(body.clone());
            let ok = body["spec"]["token"] == "good";
            Ok(json!({"status": {"authenticated": ok, "user": {
                "username": "alice", "uid": "u1", "groups": ["devs"], "extra": {"k": ["v"]}}}}))
        }
    }

    #[test]
    fn certificates_then_tokens_then_anonymous() {
        let api = Arc::new(FakeApi::default());
        let a = Authenticator::new(false, Some(api.clone()));
        let u = a
            .authenticate(
                Some(("system:node:n1".into(), vec!["system:nodes".into()])),
                Some("Bearer good"),
            )
            .unwrap();
        assert_eq!(u.name, "system:node:n1");
        assert_eq!(u.groups, vec!["system:nodes", "system:authenticated"]);
        assert!(api.calls.lock().unwrap().is_empty(), "the certificate wins");

        let u = a.authenticate(None, Some("bearer good")).unwrap();
        assert_eq!((u.name.as_str(), u.uid.as_str()), ("alice", "u1"));
        assert_eq!(u.extra["k"], vec!["v"]);
        a.authenticate(None, Some("Bearer good")).unwrap();
        assert_eq!(api.calls.lock().unwrap().len(), 1, "cached");
        assert!(a.authenticate(None, Some("Bearer bad")).is_none());
        assert!(a.authenticate(None, Some("Bearer bad")).is_none());
        assert_eq!(
            api.calls.lock().unwrap().len(),
            2,
            "rejections are cached too"
        );
        let review = api.calls.lock().unwrap()[0].clone();
        assert_eq!(review["kind"], "TokenReview");
        assert!(a.authenticate(None, None).is_none(), "anonymous is off");
        assert!(a.authenticate(None, Some("Basic abc")).is_none());

        let anon = Authenticator::new(true, Some(api.clone()));
        assert_eq!(
            anon.authenticate(None, None).unwrap().name,
            "system:anonymous"
        );
        assert!(
            anon.authenticate(None, Some("Bearer bad")).is_none(),
            "a rejected token is not anonymous"
        );
        let no_webhook = Authenticator::new(false, None);
        assert!(no_webhook.authenticate(None, Some("Bearer good")).is_none());
    }
}

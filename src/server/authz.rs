//! What the caller may do: the kubelet's mapping of a request to attributes on the Node object
//! (pkg/kubelet/server/auth.go) — verb from the HTTP method, resource `nodes`, name = this node,
//! subresource from the path — decided by `AlwaysAllow` or by a SubjectAccessReview at the API
//! server (`Webhook`). With fine-grained kubelet authorization (on by default since 1.33),
//! `/pods` and `/healthz` are checked as `nodes/pods` and `nodes/healthz` first, and fall back
//! to `nodes/proxy`, as the kubelet does.

use super::authn::User;
use super::cache::TtlCache;
use super::Reviewer;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The kubelet's authorization.webhook.cacheAuthorizedTTL and cacheUnauthorizedTTL defaults.
pub const ALLOWED_TTL: Duration = Duration::from_secs(300);
pub const DENIED_TTL: Duration = Duration::from_secs(30);

/// The verb and the subresources to try, in order.
#[derive(Debug, PartialEq)]
pub struct Attributes {
    pub verb: &'static str,
    pub subresources: Vec<&'static str>,
}

/// The kubelet's request attributes for `method` on `path`.
pub fn attributes(method: &str, path: &str) -> Attributes {
    let verb = match method {
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        // GET, HEAD (and anything else, which the router then refuses).
        _ => "get",
    };
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{}/", prefix));
    let subresources = if under("/stats") {
        vec!["stats"]
    } else if under("/metrics") {
        vec!["metrics"]
    } else if under("/logs") {
        vec!["log"]
    } else if under("/spec") {
        vec!["spec"]
    } else if under("/checkpoint") {
        vec!["checkpoint"]
    } else if under("/pods") {
        vec!["pods", "proxy"]
    } else if under("/healthz") {
        vec!["healthz", "proxy"]
    } else if under("/configz") {
        vec!["configz", "proxy"]
    } else {
        vec!["proxy"]
    };
    Attributes { verb, subresources }
}

pub enum Mode {
    AlwaysAllow,
    Webhook(Arc<dyn Reviewer>),
}

pub enum Decision {
    Allow,
    /// 403, with the kubelet's message.
    Deny(String),
    /// The review could not be made (500).
    Error(String),
}

pub struct Authorizer {
    mode: Mode,
    node_name: String,
    cache: TtlCache<String, bool>,
}

impl Authorizer {
    pub fn new(mode: Mode, node_name: String) -> Authorizer {
        Authorizer {
            mode,
            node_name,
            cache: TtlCache::new(1024),
        }
    }

    pub fn authorize(&self, user: &User, attrs: &Attributes) -> Decision {
        let Mode::Webhook(api) = &self.mode else {
            return Decision::Allow;
        };
        for sub in &attrs.subresources {
            match self.review(api.as_ref(), user, attrs.verb, sub) {
                Ok(true) => return Decision::Allow,
                Ok(false) => {}
                Err(e) => return Decision::Error(e),
            }
        }
        Decision::Deny(format!(
            "Forbidden (user={}, verb={}, resource=nodes, subresource(s)=[{}])",
            user.name,
            attrs.verb,
            attrs.subresources.join(" ")
        ))
    }

    fn review(
        &self,
        api: &dyn Reviewer,
        user: &User,
        verb: &str,
        sub: &str,
    ) -> Result<bool, String> {
        let mut spec = json!({
            "user": user.name,
            "groups": user.groups,
            "resourceAttributes": {
                "verb": verb,
                "version": "v1",
                "resource": "nodes",
                "subresource": sub,
                "name": self.node_name,
            },
        });
        if !user.uid.is_empty() {
            spec["uid"] = json!(user.uid);
        }
        if !user.extra.is_empty() {
            spec["extra"] = json!(user.extra);
        }
        let key = spec.to_string();
        if let Some(allowed) = self.cache.get(&key) {
            return Ok(allowed);
        }
        let review = json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        });
        let answer: Value = api
            .create(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                &review,
            )
            .map_err(|e| format!("SubjectAccessReview failed: {}", e))?;
        let allowed = answer["status"]["allowed"] == true && answer["status"]["denied"] != true;
        self.cache
            .put(key, allowed, if allowed { ALLOWED_TTL } else { DENIED_TTL });
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn the_kubelets_mapping() {
        let a = |m, p| attributes(m, p);
        assert_eq!(a("GET", "/stats/summary").subresources, vec!["stats"]);
        assert_eq!(a("GET", "/metrics/resource").subresources, vec!["metrics"]);
        assert_eq!(a("GET", "/metrics").subresources, vec!["metrics"]);
        assert_eq!(a("GET", "/logs/syslog").subresources, vec!["log"]);
        assert_eq!(a("GET", "/pods").subresources, vec!["pods", "proxy"]);
        assert_eq!(a("GET", "/healthz").subresources, vec!["healthz", "proxy"]);
        assert_eq!(
            a("GET", "/containerLogs/ns/p/c").subresources,
            vec!["proxy"]
        );
        assert_eq!(a("GET", "/metricsx").subresources, vec!["proxy"]);
        assert_eq!(a("POST", "/exec/ns/p/c").verb, "create");
        assert_eq!(a("HEAD", "/pods").verb, "get");
    }

    /// Allows bob nodes/proxy only.
    #[derive(Default)]
    struct FakeApi {
        calls: Mutex<Vec<Value>>,
    }

    impl Reviewer for FakeApi {
        fn create(&self, path: &str, body: &Value) -> Result<Value, String> {
            assert_eq!(path, "/apis/authorization.k8s.io/v1/subjectaccessreviews");
            self.calls.lock().unwrap().push(body.clone());
            let ra = &body["spec"]["resourceAttributes"];
            let ok = body["spec"]["user"] == "bob" && ra["subresource"] == "proxy";
            Ok(json!({"status": {"allowed": ok}}))
        }
    }

    #[test]
    fn webhook_falls_back_to_proxy_and_caches() {
        let api = Arc::new(FakeApi::default());
        let z = Authorizer::new(Mode::Webhook(api.clone()), "n1".into());
        let bob = User {
            name: "bob".into(),
            uid: String::new(),
            groups: vec!["g".into()],
            extra: Default::default(),
        };
        assert!(matches!(
            z.authorize(&bob, &attributes("GET", "/pods")),
            Decision::Allow
        ));
        let calls = api.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[0]["spec"]["resourceAttributes"]["subresource"],
            "pods"
        );
        assert_eq!(calls[0]["spec"]["resourceAttributes"]["name"], "n1");
        assert_eq!(calls[0]["kind"], "SubjectAccessReview");
        z.authorize(&bob, &attributes("GET", "/pods"));
        assert_eq!(api.calls.lock().unwrap().len(), 2, "both answers cached");
        match z.authorize(&bob, &attributes("GET", "/stats/summary")) {
            Decision::Deny(m) => assert_eq!(
                m,
                "Forbidden (user=bob, verb=get, resource=nodes, subresource(s)=[stats])"
            ),
            _ => panic!("stats allowed"),
        }
        let open = Authorizer::new(Mode::AlwaysAllow, "n1".into());
        assert!(matches!(
            open.authorize(&bob, &attributes("GET", "/stats/summary")),
            Decision::Allow
        ));
    }
}

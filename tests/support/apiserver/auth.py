"""Authentication (client certificates, admin/bootstrap/service-account bearer tokens) and an
authorizer with the rules a node agent meets in a real cluster: RBAC's system:node role plus
the Node authorizer and NodeRestriction (a node writes only its own Node and Lease, and only pods
bound to it)."""

import ssl
import time

from common import ApiError, forbidden

MASTERS = "system:masters"
NODES = "system:nodes"
BOOTSTRAPPERS = "system:bootstrappers"
NODE_PREFIX = "system:node:"


class User:
    def __init__(self, name, groups, extra=None):
        self.name = name
        self.groups = list(groups) + ["system:authenticated"]
        self.extra = extra or {}

    @property
    def admin(self):
        return MASTERS in self.groups

    @property
    def node(self):
        """The node name of a node's credentials, else None."""
        if NODES in self.groups and self.name.startswith(NODE_PREFIX):
            return self.name[len(NODE_PREFIX):]
        return None


def authenticate(authorization, peercert, opts, pki, pod_uid):
    """The request's user, None when it carries no credentials; 401 for bad credentials.
    pod_uid(ns, name) -> uid of the live pod (a token bound to a deleted pod is invalid)."""
    if authorization:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "Unauthorized")
        if token == opts.admin_token:
            return User("admin", [MASTERS])
        if token in opts.bootstrap_token:
            return User("system:bootstrap:" + token.split(".")[0], [BOOTSTRAPPERS])
        claims = pki.verify_token(token)
        if claims:
            k8s = claims.get("kubernetes.io", {})
            ns, sa = k8s.get("namespace"), k8s.get("serviceaccount", {}).get("name")
            pod = k8s.get("pod")
            if pod and pod_uid(ns, pod["name"]) != pod["uid"]:
                raise ApiError(401, "Unauthorized")
            extra = {"authentication.kubernetes.io/pod-name": [pod["name"]]} if pod else {}
            return User("system:serviceaccount:%s:%s" % (ns, sa),
                        ["system:serviceaccounts", "system:serviceaccounts:" + ns], extra)
        raise ApiError(401, "Unauthorized")
    if peercert:
        # The TLS layer checked the chain but not the validity period (like Go's x509
        # authenticator, an expired certificate is a 401, not a handshake failure).
        if ssl.cert_time_to_seconds(peercert["notAfter"]) < time.time() or \
                ssl.cert_time_to_seconds(peercert["notBefore"]) > time.time():
            raise ApiError(401, "Unauthorized")
        subject = [rdn for rdns in peercert.get("subject", ()) for rdn in rdns]
        cn = next((v for k, v in subject if k == "commonName"), "")
        return User(cn, [v for k, v in subject if k == "organizationName"])
    return None


# verb, resource plural, subresource -> allowed for every node (NodeRestriction is checked
# against the objects themselves, in the registry).
NODE_RULES = {
    "nodes": {"get", "list", "watch", "create", "update", "patch", "delete"},
    "nodes/status": {"get", "update", "patch"},
    "leases": {"get", "list", "watch", "create", "update", "patch", "delete"},
    "pods": {"get", "list", "watch", "create", "delete"},
    "pods/status": {"get", "update", "patch"},
    "events": {"create", "update", "patch"},
    "configmaps": {"get", "list", "watch"},
    "secrets": {"get", "list", "watch"},
    "serviceaccounts": {"get"},
    "services": {"get", "list", "watch"},
    "serviceaccounts/token": {"create"},
    "certificatesigningrequests": {"create", "get", "list", "watch"},
    "namespaces": {"get"},
    # system:node-proxier, which a cluster binds to the nodes when their agent is also the proxy.
    "services": {"get", "list", "watch"},
    "endpointslices": {"list", "watch"},
    # system:node may delegate its API's authentication and authorization.
    "tokenreviews": {"create"},
    "subjectaccessreviews": {"create"},
}


def authorize(user, verb, res, ns, name, sub):
    if user.admin:
        return
    what = res.plural + ("/" + sub if sub else "")
    if BOOTSTRAPPERS in user.groups:
        allowed = what == "certificatesigningrequests" and verb in ("create", "get", "list", "watch")
    elif user.node:
        allowed = verb in NODE_RULES.get(what, ())
        if allowed and name and verb not in ("get", "list", "watch"):
            if res.plural == "nodes" and name != user.node:
                raise ApiError(403, 'nodes "%s" is forbidden: node "%s" is not allowed to modify node "%s"'
                               % (name, user.node, name))
            if res.plural == "leases" and name != user.node:
                raise ApiError(403, 'leases.coordination.k8s.io "%s" is forbidden: can only access node '
                               'lease with the same name as the requesting node' % name)
    elif user.name.startswith("system:serviceaccount:"):
        # As if bound to the "view" role: read-only.
        allowed = verb in ("get", "list", "watch") and what not in ("secrets",)
    else:
        allowed = False
    if not allowed:
        raise forbidden(res, name, ns, user.name, verb, sub)

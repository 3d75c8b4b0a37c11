"""Shared pieces of the API-server double: errors as `Status` objects, time stamps, schema checks."""

import datetime
import json
import secrets
import threading

import functools

import kubernetes_validate
import kubernetes_validate.utils

# validate() re-reads and parses its 1.8 MB schema file on every call; the files never change.
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=64)(
    kubernetes_validate.utils.schema_contents)

# The Kubernetes version the double claims to be and validates against.
K8S_MINOR = "37"
K8S_VERSION = "1." + K8S_MINOR

REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 406: "NotAcceptable", 409: "Conflict", 410: "Expired",
    415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests",
    500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout",
}

class ApiError(Exception):
    """An error answered as a v1 Status, exactly as kube-apiserver words it."""

    def __init__(self, code, message, reason=None, details=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = details

    def status(self):
        return status_body(self.code, self.reason, self.message, self.details)

def status_body(code, reason, message, details=None):
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body

def qualified(res):
    """`pods`, `leases.coordination.k8s.io`: how error messages name a resource."""
    return res.plural + ("." + res.group if res.group else "")

def details(res, name):
    d = {"name": name, "kind": res.plural}
    if res.group:
        d["group"] = res.group
    return d

def not_found(res, name):
    return ApiError(404, '%s "%s" not found' % (qualified(res), name), details=details(res, name))

def already_exists(res, name):
    return ApiError(409, '%s "%s" already exists' % (qualified(res), name), "AlreadyExists",
                    details(res, name))

def conflict(res, name, why="the object has been modified; please apply your changes to the "
                            "latest version and try again"):
    return ApiError(409, 'Operation cannot be fulfilled on %s "%s": %s' % (qualified(res), name, why),
                    "Conflict", details(res, name))

def precondition_failed(what, wanted, actual):
    """The storage layer's precondition error (a uid or resourceVersion that does not match)."""
    return ApiError(409, "Precondition failed: %s in precondition: %s, %s in object meta: %s"
                    % (what, wanted, what, actual), "Conflict")

def invalid(res, name, causes):
    """422 Invalid; causes: [(field, reason, message)] as the field validators word them."""
    text = ", ".join("%s: %s" % (f, m) for f, _, m in causes)
    d = details(res, name)
    d["kind"] = res.kind
    d["causes"] = [{"reason": r, "message": m, "field": f} for f, r, m in causes]
    return ApiError(422, '%s "%s" is invalid: %s' % (res.kind, name, text), details=d)

def required(field):
    return (field, "FieldValueRequired", "Required value")

def forbidden(res, name, ns, user, verb, sub=None):
    """RBAC's denial message."""
    what = res.plural + ("/" + sub if sub else "")
    scope = 'in the namespace "%s"' % ns if ns else "at the cluster scope"
    prefix = '%s "%s"' % (qualified(res), name) if name else qualified(res)
    return ApiError(403, '%s is forbidden: User "%s" cannot %s resource "%s" in API group "%s" %s'
                    % (prefix, user, verb, what, res.group, scope),
                    details=details(res, name))

# ---- time ----

def now_rfc3339(offset_seconds=0):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")

def parse_rfc3339(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()

def random_suffix(n=5):
    """Like k8s.io/apimachinery's rand.String: no vowels, no look-alikes."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(secrets.choice(alphabet) for _ in range(n))

# ---- schema validation (recorded, not enforced: strict mode is stricter than the server) ----

class Violations:
    """Objects clients sent that strict schema validation rejects, for the tests to assert on."""

    LIMIT = 1000

    def __init__(self, log):
        self._lock = threading.Lock()
        self._items = []
        self._log = log

    def check(self, obj, method, path, user):
        if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
            return
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            return
        except kubernetes_validate.SchemaNotFoundError:
            return  # DeleteOptions and friends: nothing to check against
        except kubernetes_validate.ValidationError as e:
            where = field_path(e.absolute_path)
            message = "%s: %s" % (where, e.message) if where else e.message
        entry = {"time": now_rfc3339(), "method": method, "path": path, "user": user,
                 "message": message, "object": obj}
        self._log("VIOLATION %s %s by %s: %s in %s" % (method, path, user, message,
                                                       json.dumps(obj, sort_keys=True)))
        with self._lock:
            if len(self._items) < self.LIMIT:
                self._items.append(entry)

    def all(self):
        with self._lock:
            return list(self._items)

def field_path(parts):
    """['spec', 'containers', 0, 'image'] -> 'spec.containers[0].image'"""
    out = ""
    for p in parts:
        out += "[%d]" % p if isinstance(p, int) else ("." if out else "") + str(p)
    return out

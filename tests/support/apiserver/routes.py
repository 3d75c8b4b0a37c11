"""URL routing to the registry, and list/watch."""

import copy
import json
import random

from auth import authorize
from common import ApiError, status_body
from registry import PATCH_TYPES, RESOURCES, REVIEWS
from store import parse_field_selector, parse_label_selector

NOT_FOUND = "the server could not find the requested resource"


def parse_path(path):
    """/api/v1/[namespaces/<ns>/]<plural>[/<name>[/<sub>]] and the same under /apis/<group>/<version>;
    returns (res, ns, name, sub); ns is None for a cluster-wide request."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        api_version, rest = "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        api_version, rest = parts[1] + "/" + parts[2], parts[3:]
    else:
        raise ApiError(404, NOT_FOUND, details={})
    ns = None
    if len(rest) >= 3 and rest[0] == "namespaces" and (api_version, rest[2]) in RESOURCES:
        ns, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3 or (api_version, rest[0]) not in RESOURCES:
        raise ApiError(404, NOT_FOUND, details={})
    res = RESOURCES[(api_version, rest[0])]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if (res.namespaced and ns is None and name is not None) or (not res.namespaced and ns is not None):
        raise ApiError(404, NOT_FOUND, details={})
    return res, ns, name, sub


def method_not_allowed():
    return ApiError(405, "the server does not allow this method on the requested resource")


class Router:
    def __init__(self, server):
        self.server = server  # the ApiServer: store, registry, hooks, violations, options

    def dispatch(self, req, user, method, path, query, body_bytes, content_type):
        """Answers one API request: returns (code, body), or None when it streamed a watch."""
        res, ns, name, sub = parse_path(path)
        srv = self.server
        store, registry = srv.store, srv.registry

        def body():
            return decode_body(body_bytes, res, sub)

        def check(obj):
            if not user.admin:
                filled = dict(obj)
                filled.setdefault("kind", res.kind if sub != "token" else "TokenRequest")
                filled.setdefault("apiVersion", res.api_version if sub != "token" else "authentication.k8s.io/v1")
                srv.violations.check(filled, method, req.path, user.name)

        if res.plural in REVIEWS:
            if method != "POST" or name is not None:
                raise method_not_allowed()
            need_json(content_type)
            obj = body()
            authorize(user, "create", res, None, None, None)
            check(obj)
            with store.cond:
                return 201, srv.hooks.review(res, obj)

        if name is None:
            if method == "GET":
                watch = query.get("watch") in ("true", "1")
                authorize(user, "watch" if watch else "list", res, ns, None, None)
                if watch:
                    srv.watch(req, res, ns, query)
                    return None
                return 200, self.list(res, ns, query)
            if method == "POST" and not (res.namespaced and ns is None):
                need_json(content_type)
                obj = body()
                authorize(user, "create", res, ns, (obj.get("metadata") or {}).get("name"), None)
                check(obj)
                with store.cond:
                    return 201, registry.create(res, ns or "", obj, user)
            raise method_not_allowed()

        if sub is None or (sub == "status" and res.has_status):
            if method == "GET":
                authorize(user, "get", res, ns, name, sub)
                with store.cond:
                    return 200, registry.get(res, ns or "", name)
            if method == "PUT":
                need_json(content_type)
                obj = body()
                authorize(user, "update", res, ns, name, sub)
                check(obj)
                with store.cond:
                    return 200, registry.update(res, ns or "", name, sub, obj, user)
            if method == "PATCH":
                if content_type not in PATCH_TYPES:
                    raise ApiError(415, "the body of the request was in an unknown format - accepted media types "
                                        "include: " + ", ".join(PATCH_TYPES) + " (apply-patch+yaml: not in this test double)")
                patch = parse_json(body_bytes)
                authorize(user, "patch", res, ns, name, sub)
                with store.cond:
                    return 200, registry.patch(res, ns or "", name, sub, content_type, patch, user, check)
            if method == "DELETE" and sub is None:
                options = parse_json(body_bytes) if body_bytes.strip() else {}
                if not isinstance(options, dict):
                    raise ApiError(400, "DeleteOptions must be a JSON object")
                if "gracePeriodSeconds" in query:  # also accepted as a query parameter
                    try:
                        options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
                    except ValueError:
                        raise ApiError(400, "invalid gracePeriodSeconds: %r" % query["gracePeriodSeconds"])
                authorize(user, "delete", res, ns, name, None)
                with store.cond:
                    obj = registry.delete(res, ns or "", name, options, user)
                    if store.get(res.key, ns or "", name) is not None or res.plural in ("pods", "namespaces"):
                        return 200, obj
                return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                             "details": {"name": name, "kind": res.plural, "uid": obj["metadata"]["uid"],
                                         **({"group": res.group} if res.group else {})}}
            raise method_not_allowed()

        if res.plural == "certificatesigningrequests" and sub == "approval":
            if method != "PUT":
                raise method_not_allowed()
            need_json(content_type)
            obj = body()
            authorize(user, "update", res, None, name, sub)
            with store.cond:
                return 200, srv.hooks.approve(res, name, obj)
        if res.plural == "serviceaccounts" and sub == "token":
            if method != "POST":
                raise method_not_allowed()
            need_json(content_type)
            obj = body()
            authorize(user, "create", res, ns, name, sub)
            check(obj)
            with store.cond:
                return 201, srv.hooks.token_request(res, RESOURCES[("v1", "pods")], ns, name, obj, user)
        raise ApiError(404, NOT_FOUND, details={})

    def matcher(self, res, ns, query):
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), res.plural)

        def matches(obj):
            meta = (obj or {}).get("metadata")
            return meta is not None and (ns is None or meta.get("namespace") == ns) and \
                labels(meta.get("labels")) and fields(obj)
        return matches

    def list(self, res, ns, query):
        matches = self.matcher(res, ns, query)
        store = self.server.store
        with store.cond:
            items = [copy.deepcopy(o) for o in store.list(res.key, ns) if matches(o)]
            return {"kind": res.kind + "List", "apiVersion": res.api_version,
                    "metadata": {"resourceVersion": str(store.rv)}, "items": items}


def need_json(content_type):
    if content_type != "application/json":
        raise ApiError(415, "the body of the request was in an unknown format - accepted media types include: "
                            "application/json (this test double speaks JSON only)")


def parse_json(data):
    try:
        return json.loads(data or b"null")
    except ValueError as e:
        raise ApiError(400, "couldn't get version/kind; json parse error: %s" % e)


def decode_body(data, res, sub):
    obj = parse_json(data)
    if not isinstance(obj, dict):
        raise ApiError(400, "the request body must be a JSON object")
    want_kind, want_version = (("TokenRequest", "authentication.k8s.io/v1") if sub == "token"
                               else (res.kind, res.api_version))
    # Missing kind/apiVersion are taken from the URL, as the real REST handlers do.
    if obj.get("apiVersion", want_version) != want_version:
        raise ApiError(400, "the API version in the data (%s) does not match the expected API version (%s)"
                       % (obj["apiVersion"], want_version))
    if obj.get("kind", want_kind) != want_kind:
        raise ApiError(400, "%s in version \"%s\" cannot be handled as a %s: the kind in the data does not "
                            "match the expected kind" % (obj["kind"], want_version.split("/")[-1], want_kind))
    return obj


def watch_events(history, matches):
    """History entries -> (type, object) for one watcher: objects that start or stop matching its
    selectors arrive as ADDED / DELETED, as from the real watch cache."""
    out = []
    for rv, _, kind, obj, prev in history:
        now, before = matches(obj), prev is not None and matches(prev)
        if kind == "DELETED":
            if before or now:
                out.append(("DELETED", obj))
        elif now and (kind == "ADDED" or not before):
            out.append(("ADDED", obj))
        elif now:
            out.append(("MODIFIED", obj))
        elif before:
            gone = copy.deepcopy(prev)
            gone["metadata"]["resourceVersion"] = str(rv)
            out.append(("DELETED", gone))
    return out


def watch_timeout(query):
    """timeoutSeconds, else a random 5-10 minutes (as the real server spreads reconnects)."""
    if query.get("timeoutSeconds"):
        try:
            return max(0, int(query["timeoutSeconds"]))
        except ValueError:
            raise ApiError(400, "invalid timeoutSeconds: %r" % query["timeoutSeconds"])
    return random.uniform(300, 600)


def expired_event(err):
    return {"type": "ERROR", "object": status_body(err.code, err.reason, err.message)}

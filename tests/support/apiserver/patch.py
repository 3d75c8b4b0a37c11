"""PATCH as kube-apiserver applies it: strategic merge patch driven by the patch strategies and
merge keys of the real OpenAPI schema (x-kubernetes-patch-strategy / -merge-key, taken from the
schemas kubernetes_validate ships, so lists are merged or replaced exactly as the Go struct tags
say), JSON merge patch (RFC 7386) and JSON patch (RFC 6902)."""

import copy
import json
import os

import kubernetes_validate.utils as kvu

from common import ApiError, K8S_VERSION


class Schemas:
    """Navigates the OpenAPI schemas of one Kubernetes version."""

    def __init__(self):
        version = [v for v in kvu.all_versions() if kvu.major_minor(v) <= K8S_VERSION][-1]
        self.dir = os.path.join(os.path.dirname(kvu.__file__), "kubernetes-json-schema",
                                "v%s-local-strict" % version)
        with open(os.path.join(self.dir, "_definitions.json")) as f:
            self.defs = json.load(f)["$defs"]
        self.tops = {}

    def top(self, kind, api_version):
        group_version = api_version.split("/")
        name = "%s-%s.json" % (kind.lower(), "-".join([group_version[0].split(".")[0]] + group_version[1:]))
        if name not in self.tops:
            try:
                with open(os.path.join(self.dir, name)) as f:
                    self.tops[name] = json.load(f)
            except FileNotFoundError:
                self.tops[name] = {}
        return self.tops[name]

    def resolve(self, node):
        while isinstance(node, dict) and "$ref" in node:
            node = self.defs.get(node["$ref"].rsplit("/", 1)[-1], {})
        return node or {}

    def child(self, node, key):
        node = self.resolve(node)
        props = node.get("properties") or {}
        if key in props:
            return props[key]
        extra = node.get("additionalProperties")
        return extra if isinstance(extra, dict) else {}

    def items(self, node):
        return self.resolve(node).get("items") or {}


SCHEMAS = Schemas()


def prune(obj, kind, api_version):
    """Drops the fields the schema does not know, as decoding into the Go types does (the real
    server then answers with a warning; strict validation has recorded them already)."""
    _prune(obj, SCHEMAS.top(kind, api_version))
    return obj


def _prune(value, schema):
    node = SCHEMAS.resolve(schema)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return
    if isinstance(value, list):
        for item in value:
            _prune(item, node.get("items") or {})
    elif isinstance(value, dict):
        props, extra = node.get("properties"), node.get("additionalProperties")
        for key in list(value):
            if props is not None and key in props:
                _prune(value[key], props[key])
            elif isinstance(extra, dict):
                _prune(value[key], extra)
            elif props is not None:
                del value[key]

ORDER = "$setElementOrder/"
DELETE_FROM = "$deleteFromPrimitiveList/"


def strategic_merge(obj, patch, kind, api_version):
    if not isinstance(patch, dict):
        raise ApiError(400, "strategic merge patch must be a JSON object")
    return _merge_map(copy.deepcopy(obj), patch, SCHEMAS.top(kind, api_version)) or {}


def _merge_map(original, patch, schema):
    """Merges patch into original (modified in place); None means the map was deleted."""
    directive = patch.get("$patch")
    if directive == "replace":
        return _merge_map({}, {k: v for k, v in patch.items() if k != "$patch"}, schema)
    if directive == "delete":
        return None
    if directive is not None:
        raise ApiError(422, "Unknown patch type: %s in map: %s" % (directive, patch), "Invalid")
    if "$retainKeys" in patch:
        keep = set(patch["$retainKeys"] or [])
        for k in [k for k in original if k not in keep]:
            del original[k]
    orders = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith(ORDER):
            orders[key[len(ORDER):]] = value
        elif key.startswith(DELETE_FROM):
            field = key[len(DELETE_FROM):]
            if isinstance(original.get(field), list):
                original[field] = [x for x in original[field] if x not in (value or [])]
        elif value is None:
            original.pop(key, None)
        else:
            child = SCHEMAS.child(schema, key)
            have = original.get(key)
            if isinstance(value, dict):
                merged = _merge_map(have if isinstance(have, dict) else {}, value, child)
                if merged is None:
                    original.pop(key, None)
                else:
                    original[key] = merged
            elif isinstance(value, list):
                original[key] = _merge_list(have if isinstance(have, list) else [], value, child)
            else:
                original[key] = value
    for field, order in orders.items():
        child = SCHEMAS.child(schema, field)
        if isinstance(original.get(field), list) and isinstance(order, list):
            original[field] = _apply_order(original[field], order, child.get("x-kubernetes-patch-merge-key"))
    return original


def _merge_list(original, patch, schema):
    item_schema = SCHEMAS.items(schema)
    clean = [_merge_map({}, i, item_schema) if isinstance(i, dict) else i for i in patch]
    if "merge" not in schema.get("x-kubernetes-patch-strategy", "").split(","):
        return [i for i in clean if i is not None]  # atomic list: the patch's list replaces it
    key = schema.get("x-kubernetes-patch-merge-key")
    if not key:  # a set of primitives: union, in order
        return original + [x for i, x in enumerate(patch) if x not in original and x not in patch[:i]]
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [i for i in clean if i is not None and i != {}]
    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise ApiError(422, "map: %s does not contain declared merge key: %s" % (item, key), "Invalid")
        at = [n for n, have in enumerate(result) if isinstance(have, dict) and have.get(key) == item[key]]
        if item.get("$patch") == "delete":
            result = [have for n, have in enumerate(result) if n not in at]
        elif at:
            merged = _merge_map(result[at[0]], item, item_schema)
            result[at[0]] = merged if merged is not None else {}
        else:
            result.append(_merge_map({}, item, item_schema))
    return result


def _apply_order(items, order, key):
    """$setElementOrder: the listed elements take the listed order; elements the patch does not
    list (the server's own) keep their places."""
    ident = (lambda it: it.get(key) if isinstance(it, dict) else it) if key else (lambda it: it)
    wanted = [o.get(key) if key and isinstance(o, dict) else o for o in order]
    pos = {json.dumps(v, sort_keys=True): n for n, v in enumerate(wanted)}
    rank = lambda it: pos.get(json.dumps(ident(it), sort_keys=True))  # noqa: E731
    ordered = iter(sorted((it for it in items if rank(it) is not None), key=rank))
    return [next(ordered) if rank(it) is not None else it for it in items]


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    target = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = merge_patch(target.get(key), value)
    return target


def json_patch(doc, ops):
    """RFC 6902; a failing operation is a 422, as in the real server."""
    if not isinstance(ops, list):
        raise ApiError(400, "json patch must be a JSON array of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            doc = _json_patch_op(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "the server rejected our request due to an error in our request: "
                           "json patch %s operation does not apply: %s" % (op.get("op") if isinstance(op, dict) else op, e),
                           "Invalid")
    return doc


def _pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError("invalid JSON pointer %r" % path)
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _walk(doc, tokens):
    for t in tokens:
        doc = doc[int(t)] if isinstance(doc, list) else doc[t]
    return doc


def _json_patch_op(doc, op):
    kind, path = op["op"], _pointer(op["path"])
    if kind == "test":
        if _walk(doc, path) != op["value"]:
            raise ValueError("testing value %s failed" % op["path"])
        return doc
    if kind in ("move", "copy"):
        value = copy.deepcopy(_walk(doc, _pointer(op["from"])))
        if kind == "move":
            doc = _json_patch_op(doc, {"op": "remove", "path": op["from"]})
        return _json_patch_op(doc, {"op": "add", "path": op["path"], "value": value})
    if not path:
        if kind == "remove":
            raise ValueError("cannot remove the whole document")
        return copy.deepcopy(op["value"])
    parent, last = _walk(doc, path[:-1]), path[-1]
    if kind == "add":
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else _index(last, len(parent) + 1), copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "remove":
        if isinstance(parent, list):
            del parent[_index(last, len(parent))]
        else:
            del parent[last]
    elif kind == "replace":
        if isinstance(parent, list):
            parent[_index(last, len(parent))] = copy.deepcopy(op["value"])
        else:
            parent[last]  # must exist
            parent[last] = copy.deepcopy(op["value"])
    else:
        raise ValueError("unknown operation %r" % kind)
    return doc


def _index(token, bound):
    n = int(token)
    if n < 0 or n >= bound:
        raise IndexError("index %d out of range" % n)
    return n

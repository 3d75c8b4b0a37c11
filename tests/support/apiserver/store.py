"""The object store: one lock, one global resourceVersion counter, a bounded watch history,
persistence under the state dir, and label/field selectors."""

import collections
import copy
import json
import os
import re
import threading

from common import ApiError


class Store:
    HISTORY = 1000   # watch events kept; older resourceVersions get 410 Expired
    MAX_EVENTS = 2000  # Event objects kept (the real server expires them after an hour)

    def __init__(self, path):
        self.path = path
        self.cond = threading.Condition()
        self.rv = 0
        self.objects = {}  # (resource key, namespace, name) -> object
        self.history = collections.deque()  # (rv, key, type, obj, prev)
        # Every event after history_start is in history; watches from older RVs are expired.
        self.history_start = 0
        # Bumped by /_test/close-watches; open watch streams see it and drop their connection.
        self.watch_epoch = 0
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            self.rv = saved["rv"]
            for key, ns, name, obj in saved["objects"]:
                self.objects[(key, ns, name)] = obj
        # After a (re)start there is no history, as after a real restart with compaction.
        self.history_start = self.rv

    # All methods below expect self.cond to be held by the caller (`with store.cond:`).

    def get(self, key, ns, name):
        return self.objects.get((key, ns, name))

    def list(self, key, ns=None):
        return [o for (k, n, _), o in sorted(self.objects.items()) if k == key and (ns is None or n == ns)]

    def write(self, key, ns, name, obj, event):
        """Stores obj (or removes it for DELETED) with the next resourceVersion and records the
        event; returns the stored object."""
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        prev = self.objects.get((key, ns, name))
        if event == "DELETED":
            self.objects.pop((key, ns, name), None)
        else:
            self.objects[(key, ns, name)] = obj
        self.history.append((self.rv, key, event, copy.deepcopy(obj), prev))
        while len(self.history) > self.HISTORY:
            self.history_start = self.history.popleft()[0]
        if key.endswith("/events") and event == "ADDED":
            self._expire_events(key)
        self.save()
        self.cond.notify_all()
        return obj

    def _expire_events(self, key):
        events = [(int(o["metadata"]["resourceVersion"]), k) for k, o in self.objects.items() if k[0] == key]
        for _, k in sorted(events)[:max(0, len(events) - self.MAX_EVENTS)]:
            del self.objects[k]  # silently, as TTL expiry in etcd

    def compact(self):
        self.history.clear()
        self.history_start = self.rv

    def save(self):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"rv": self.rv, "objects": [[k, n, m, o] for (k, n, m), o in self.objects.items()]}, f)
        os.replace(tmp, self.path)

    def events_after(self, rv, key):
        """History entries of `key` with a resourceVersion above rv."""
        if rv < self.history_start:
            raise ApiError(410, "too old resource version: %d (%d)" % (rv, self.history_start), "Expired")
        return [h for h in self.history if h[0] > rv and h[1] == key]


# ---- selectors ----

def parse_label_selector(text):
    """`a=b,c!=d,e,!f,g in (h,i),j notin (k)` -> predicate on a labels dict."""
    reqs = []
    for term in re.findall(r"[^,(]+(?:\([^)]*\))?", text or ""):
        term = term.strip()
        if not term:
            continue
        m = re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term)
        if m:
            values = {v.strip() for v in m.group(3).split(",") if v.strip()}
            reqs.append((m.group(1), m.group(2), values))
            continue
        m = re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)", term)
        if m:
            reqs.append((m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)))
        elif re.fullmatch(r"!\s*[\w./-]+", term):
            reqs.append((term[1:].strip(), "!", None))
        elif re.fullmatch(r"[\w./-]+", term):
            reqs.append((term, "exists", None))
        else:
            raise ApiError(400, "unable to parse requirement: %s" % term)

    def matches(labels):
        labels = labels or {}
        for key, op, value in reqs:
            have = labels.get(key)
            if op == "=":
                ok = have == value
            elif op == "!=":
                ok = have != value
            elif op == "exists":
                ok = key in labels
            elif op == "!":
                ok = key not in labels
            elif op == "in":
                ok = have is not None and have in value
            else:  # notin
                ok = have not in value
            if not ok:
                return False
        return True
    return matches


# Field selectors each resource supports (besides metadata.name and metadata.namespace).
FIELDS = {
    "pods": {"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
             "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName"},
    "nodes": {"spec.unschedulable"},
    "events": {"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
               "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
               "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"},
    "secrets": {"type"},
    "certificatesigningrequests": {"spec.signerName"},
}


def parse_field_selector(text, plural):
    reqs = []
    for term in (text or "").split(","):
        if not term.strip():
            continue
        m = re.fullmatch(r"\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*", term)
        if not m:
            raise ApiError(400, "invalid selector: '%s'; can't understand '%s'" % (text, term))
        field = m.group(1)
        if field not in ("metadata.name", "metadata.namespace") and field not in FIELDS.get(plural, ()):
            raise ApiError(400, 'field label not supported: %s' % field)
        reqs.append((field, m.group(2) == "!=", m.group(3)))

    def matches(obj):
        for field, negate, want in reqs:
            have = obj
            for part in field.split("."):
                have = have.get(part) if isinstance(have, dict) else None
            if field == "source":
                have = (obj.get("source") or {}).get("component") or obj.get("reportingComponent")
            have = "" if have is None else (str(have).lower() if isinstance(have, bool) else str(have))
            if (have == want) == negate:
                return False
        return True
    return matches

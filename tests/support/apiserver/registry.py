"""The resources the double serves and the generic registry semantics of kube-apiserver: create,
update (optimistic concurrency, uid preconditions, no-op updates that write nothing), status
subresources, patches, graceful deletion and finalizers."""

import copy
import time
import uuid

import patch as patches
import pods
from common import (ApiError, already_exists, conflict, invalid, not_found, now_rfc3339,
                    parse_rfc3339, precondition_failed, random_suffix, required)


class Res:
    def __init__(self, plural, kind, api_version, namespaced, status=False, create_on_update=False):
        self.plural, self.kind, self.api_version = plural, kind, api_version
        self.group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        self.namespaced = namespaced
        self.has_status = status  # a status subresource: the main resource ignores status
        self.create_on_update = create_on_update
        self.key = (self.group + "/" if self.group else "") + plural  # store key


RESOURCES = {(r.api_version, r.plural): r for r in [
    Res("nodes", "Node", "v1", False, status=True),
    Res("pods", "Pod", "v1", True, status=True),
    Res("namespaces", "Namespace", "v1", False, status=True),
    Res("configmaps", "ConfigMap", "v1", True),
    Res("secrets", "Secret", "v1", True),
    Res("serviceaccounts", "ServiceAccount", "v1", True),
    Res("services", "Service", "v1", True, status=True),
    Res("events", "Event", "v1", True, create_on_update=True),
    Res("events", "Event", "events.k8s.io/v1", True, create_on_update=True),
    Res("leases", "Lease", "coordination.k8s.io/v1", True),
    Res("services", "Service", "v1", True, status=True),
    Res("endpointslices", "EndpointSlice", "discovery.k8s.io/v1", True),
    Res("certificatesigningrequests", "CertificateSigningRequest", "certificates.k8s.io/v1", False, status=True),
    # Create-only reviews: answered at once, never stored (admission.py's review()).
    Res("tokenreviews", "TokenReview", "authentication.k8s.io/v1", False),
    Res("subjectaccessreviews", "SubjectAccessReview", "authorization.k8s.io/v1", False),
]}
REVIEWS = ("tokenreviews", "subjectaccessreviews")
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
ROOT_CA_NOTE = ("Contains a CA bundle that can be used to verify the kube-apiserver when using internal "
                "endpoints such as the internal service IP or kubernetes.default.svc. No other usage is "
                "guaranteed across distributions of Kubernetes clusters.")
PATCH_TYPES = ("application/strategic-merge-patch+json", "application/merge-patch+json",
               "application/json-patch+json")


class Registry:
    def __init__(self, store, pki, hooks):
        self.store = store
        self.pki = pki
        # Resource-specific behaviour (certificates.py): called under the store lock.
        self.hooks = hooks

    def res(self, plural, api_version="v1"):
        return RESOURCES[(api_version, plural)]

    # ---- namespaces and what every namespace has ----

    def bootstrap(self):
        with self.store.cond:
            for ns in INITIAL_NAMESPACES:
                if not self.store.get("namespaces", "", ns):
                    self.create(self.res("namespaces"), "", {"metadata": {"name": ns}})

    def _namespace_objects(self, ns):
        """The default ServiceAccount (serviceaccounts controller) and the kube-root-ca.crt
        ConfigMap (root-ca-cert-publisher) every namespace gets."""
        if not self.store.get("serviceaccounts", ns, "default"):
            self.create(self.res("serviceaccounts"), ns, {"metadata": {"name": "default"}})
        if not self.store.get("configmaps", ns, "kube-root-ca.crt"):
            self.create(self.res("configmaps"), ns, {
                "metadata": {"name": "kube-root-ca.crt", "annotations": {"kubernetes.io/description": ROOT_CA_NOTE}},
                "data": {"ca.crt": self.pki.ca_pem}})

    # ---- reads (callers hold the store lock) ----

    def get(self, res, ns, name):
        obj = self.store.get(res.key, ns, name)
        if obj is None:
            raise not_found(res, name)
        return obj

    # ---- writes (callers hold the store lock) ----

    def create(self, res, ns, obj, user=None):
        obj = patches.prune(copy.deepcopy(obj), res.kind, res.api_version)
        obj["kind"], obj["apiVersion"] = res.kind, res.api_version
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + random_suffix()
        name = meta.get("name")
        if not name:
            raise invalid(res, "", [("metadata.name", "FieldValueRequired",
                                     "Required value: name or generateName is required")])
        if res.namespaced:
            if meta.get("namespace", ns) != ns:
                raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
            if not self.store.get("namespaces", "", ns):
                raise ApiError(404, 'namespaces "%s" not found' % ns, details={"name": ns, "kind": "namespaces"})
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise ApiError(500, "resourceVersion should not be set on objects to be created", "InternalError")
        if self.store.get(res.key, ns, name):
            raise already_exists(res, name)
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(k, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if res.plural == "pods":
            self._create_pod(res, obj, user)
        elif res.plural == "nodes":
            status = obj.setdefault("status", {})
            if "capacity" in status:
                status.setdefault("allocatable", status["capacity"])
        elif res.plural == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        elif res.plural == "events":
            self._validate_event(res, obj, ns)
        self.hooks.before_create(res, obj, user)
        stored = self.store.write(res.key, ns, name, obj, "ADDED")
        if res.plural == "namespaces":
            self._namespace_objects(name)
        self.hooks.after_write(res, stored, user)
        return stored

    def _create_pod(self, res, pod, user):
        pods.validate(res, pod)
        if user is not None and user.node:
            self._node_may_create_pod(user.node, pod)
        pods.apply_defaults(pod)
        ns = pod["metadata"]["namespace"]
        pods.admit_service_account(pod, lambda sa: self.store.get("serviceaccounts", ns, sa))
        pod["metadata"]["generation"] = 1
        pod["status"] = {"phase": "Pending", "qosClass": pods.qos_class(pod["spec"])}
        if pod["spec"].get("nodeName"):
            # As if the scheduler had bound it (Binding sets this condition).
            pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True",
                                            "lastProbeTime": None, "lastTransitionTime": now_rfc3339()}]

    @staticmethod
    def _node_may_create_pod(node, pod):
        """NodeRestriction: a node creates only mirror pods bound to itself."""
        name = pod["metadata"]["name"]
        why = None
        if pods.MIRROR not in (pod["metadata"].get("annotations") or {}):
            why = 'pod does not have "%s" annotation, node "%s" can only create mirror pods' % (pods.MIRROR, node)
        elif pod["spec"].get("nodeName") != node:
            why = 'node "%s" can only create pods with spec.nodeName set to itself' % node
        elif pod["spec"].get("serviceAccountName") or pod["spec"].get("serviceAccount"):
            why = 'node "%s" can not create pods that reference a service account' % node
        else:
            owners = pod["metadata"].get("ownerReferences") or []
            if len(owners) > 1 or any(o.get("kind") != "Node" or o.get("name") != node or
                                      o.get("apiVersion") != "v1" for o in owners):
                why = 'node "%s" can only create pods with an owner reference set to itself' % node
        if why:
            raise ApiError(403, 'pods "%s" is forbidden: %s' % (name, why), details={"name": name, "kind": "pods"})

    @staticmethod
    def _validate_event(res, event, ns):
        name = event["metadata"]["name"]
        if res.group == "events.k8s.io":
            causes = [required(f) for f in ("eventTime", "reportingController", "reportingInstance", "action", "reason")
                      if not event.get(f)]
            if event.get("type") not in ("Normal", "Warning"):
                causes.append(("type", "FieldValueInvalid", "Invalid value: %r: has invalid value" % event.get("type")))
            regarding_ns = (event.get("regarding") or {}).get("namespace")
        else:
            causes = []
            regarding_ns = (event.get("involvedObject") or {}).get("namespace")
        if regarding_ns and regarding_ns != ns:
            causes.append(("involvedObject.namespace", "FieldValueInvalid",
                           "Invalid value: %r: does not match event.namespace" % regarding_ns))
        if causes:
            raise invalid(res, name, causes)

    def update(self, res, ns, name, sub, new, user=None):
        """PUT (and the end of PATCH): new is the complete object the client wants."""
        old = self.store.get(res.key, ns, name)
        if old is None:
            if res.create_on_update and sub is None:
                return self.create(res, ns, new, user)
            raise not_found(res, name)
        new = patches.prune(copy.deepcopy(new), res.kind, res.api_version)
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise ApiError(400, "the name of the object (%s) does not match the name on the URL (%s)" % (meta.get("name"), name))
        if res.namespaced and meta.get("namespace", ns) != ns:
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
            raise precondition_failed("UID", meta["uid"], old["metadata"]["uid"])
        if meta.get("resourceVersion") and meta["resourceVersion"] != old["metadata"]["resourceVersion"]:
            raise conflict(res, name)
        new["kind"], new["apiVersion"] = res.kind, res.api_version
        if sub == "status":
            # The status subresource keeps the stored object but for its status.
            status = new.get("status")
            new = copy.deepcopy(old)
            new["status"] = status if status is not None else {}
        else:
            # Identity, deletion state and (for status-bearing kinds) the status are the server's.
            for k in ("name", "uid", "creationTimestamp", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generation"):
                if k in old["metadata"]:
                    new["metadata"][k] = old["metadata"][k]
                else:
                    new["metadata"].pop(k, None)
            if res.namespaced:
                new["metadata"]["namespace"] = ns
            if res.has_status:
                new["status"] = copy.deepcopy(old.get("status"))
                if new["status"] is None:
                    new.pop("status")
            if res.plural == "pods":
                pods.check_update(res, old, new)
                if new["spec"] != old["spec"]:
                    new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            if old["metadata"].get("deletionTimestamp") and \
                    set(new["metadata"].get("finalizers") or []) - set(old["metadata"].get("finalizers") or []):
                raise invalid(res, name, [("metadata.finalizers", "FieldValueForbidden",
                                           "Forbidden: no new finalizers can be added if the object is being deleted")])
        self.hooks.before_update(res, old, new, sub, user)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return old  # a no-op update writes nothing: no new resourceVersion, no event
        if old["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers") and \
                (res.plural != "pods" or old["metadata"].get("deletionGracePeriodSeconds") == 0):
            return self.store.write(res.key, ns, name, new, "DELETED")  # the last finalizer went
        stored = self.store.write(res.key, ns, name, new, "MODIFIED")
        self.hooks.after_write(res, stored, user)
        return stored

    def patch(self, res, ns, name, sub, content_type, body, user=None, check=None):
        """PATCH: apply to the stored object, then update. check(obj) sees the result first."""
        old = self.get(res, ns, name)
        if content_type == PATCH_TYPES[0]:
            result = patches.strategic_merge(old, body, res.kind, res.api_version)
        elif content_type == PATCH_TYPES[1]:
            result = patches.merge_patch(old, body)
        else:
            result = patches.json_patch(old, body)
        if not isinstance(result, dict):
            raise ApiError(400, "the patch did not produce an object")
        meta = result.setdefault("metadata", {})
        # A uid in the patch is a precondition (patchResource in the real server).
        if meta.get("uid") and meta["uid"] != old["metadata"]["uid"]:
            raise precondition_failed("UID", meta.get("uid"), old["metadata"]["uid"])
        if check:
            check(result)
        return self.update(res, ns, name, sub, result, user)

    def delete(self, res, ns, name, options, user=None):
        obj = self.get(res, ns, name)
        meta = obj["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise precondition_failed("UID", pre["uid"], meta["uid"])
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise precondition_failed("ResourceVersion", pre["resourceVersion"], meta["resourceVersion"])
        self.hooks.before_delete(res, obj, user)
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        grace = pods.effective_grace(obj, options) if res.plural == "pods" else 0
        finalizers = meta.get("finalizers") or []
        if meta.get("deletionTimestamp"):
            old_grace = meta.get("deletionGracePeriodSeconds") or 0
            if grace >= old_grace and (old_grace > 0 or finalizers):
                return obj  # deletion pending: a delete may only shorten the grace period
        if grace > 0 or finalizers:
            if meta.get("deletionTimestamp"):  # shortened: counts from the first delete
                start = parse_rfc3339(meta["deletionTimestamp"]) - (meta.get("deletionGracePeriodSeconds") or 0)
                meta["deletionTimestamp"] = now_rfc3339(start + grace - time.time())
            else:
                meta["deletionTimestamp"] = now_rfc3339(grace)
            meta["deletionGracePeriodSeconds"] = grace
            return self.store.write(res.key, ns, name, obj, "MODIFIED")
        self.store.write(res.key, ns, name, obj, "DELETED")
        if res.plural == "namespaces":
            for (key, ns2, name2), o in list(self.store.objects.items()):
                if ns2 == name:
                    self.store.write(key, ns2, name2, copy.deepcopy(o), "DELETED")
        return obj

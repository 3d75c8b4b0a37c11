"""What kube-apiserver does to a Pod besides storing it: defaulting (SetDefaults_* of core/v1),
the admission plugins that touch a pod a node agent sees (ServiceAccount, DefaultTolerationSeconds,
Priority), the QoS class, the field validation that a node agent can trip over, and the
update rules (pod spec is mostly immutable)."""

import copy
import re
from decimal import Decimal

from common import ApiError, invalid, random_suffix, required

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
MIRROR = "kubernetes.io/config.mirror"
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def all_containers(spec):
    return (spec.get("initContainers") or []) + (spec.get("containers") or [])


def apply_defaults(pod):
    spec = pod.setdefault("spec", {})
    for k, v in (("restartPolicy", "Always"), ("terminationGracePeriodSeconds", 30),
                 ("dnsPolicy", "ClusterFirst"), ("schedulerName", "default-scheduler"),
                 ("securityContext", {}), ("enableServiceLinks", True),
                 ("preemptionPolicy", "PreemptLowerPriority"), ("priority", 0)):
        spec.setdefault(k, v)
    for c in all_containers(spec) + (spec.get("ephemeralContainers") or []):
        _container_defaults(c, spec.get("hostNetwork", False))
    for vol in spec.get("volumes") or []:
        for source in ("secret", "configMap", "downwardAPI", "projected"):
            if isinstance(vol.get(source), dict):
                vol[source].setdefault("defaultMode", 420)
        if isinstance(vol.get("hostPath"), dict):
            vol["hostPath"].setdefault("type", "")
        for item in (vol.get("downwardAPI") or {}).get("items") or []:
            if isinstance(item.get("fieldRef"), dict):
                item["fieldRef"].setdefault("apiVersion", "v1")
    # DefaultTolerationSeconds admission.
    tolerations = spec.setdefault("tolerations", [])
    for taint in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") == taint and t.get("effect") in ("NoExecute", None, "") for t in tolerations):
            tolerations.append({"key": taint, "operator": "Exists", "effect": "NoExecute",
                                "tolerationSeconds": 300})


def _container_defaults(c, host_network):
    image = c.get("image") or ""
    if "imagePullPolicy" not in c:
        tagless = "@" not in image and ":" not in image.rsplit("/", 1)[-1]
        c["imagePullPolicy"] = "Always" if tagless or image.endswith(":latest") else "IfNotPresent"
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    resources = c.setdefault("resources", {})
    limits = resources.get("limits") or {}
    if limits:  # requests default to limits
        requests = resources.setdefault("requests", {})
        for k, v in limits.items():
            requests.setdefault(k, v)
    for p in c.get("ports") or []:
        p.setdefault("protocol", "TCP")
        if host_network:
            p.setdefault("hostPort", p.get("containerPort"))
    for env in c.get("env") or []:
        ref = (env.get("valueFrom") or {}).get("fieldRef")
        if isinstance(ref, dict):
            ref.setdefault("apiVersion", "v1")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        p = c.get(probe)
        if isinstance(p, dict):
            for k, v in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                         ("failureThreshold", 3)):
                p.setdefault(k, v)
            if isinstance(p.get("httpGet"), dict):
                p["httpGet"].setdefault("scheme", "HTTP")
                p["httpGet"].setdefault("path", "/")


def admit_service_account(pod, service_accounts):
    """The ServiceAccount admission plugin. service_accounts(name) -> the SA object or None."""
    spec = pod["spec"]
    name = pod["metadata"]["name"]
    if MIRROR in (pod["metadata"].get("annotations") or {}):
        # Mirror pods are the kubelet's static pods: they may not use API credentials at all.
        if spec.get("serviceAccountName") or spec.get("serviceAccount"):
            raise ApiError(403, 'pods "%s" is forbidden: a mirror pod may not reference service accounts' % name)
        for vol in spec.get("volumes") or []:
            for kind, what in (("secret", "secrets"), ("configMap", "configmaps"),
                               ("persistentVolumeClaim", "persistentvolumeclaims")):
                if kind in vol:
                    raise ApiError(403, 'pods "%s" is forbidden: a mirror pod may not reference %s' % (name, what))
            for source in (vol.get("projected") or {}).get("sources") or []:
                if "serviceAccountToken" in source:
                    raise ApiError(403, 'pods "%s" is forbidden: a mirror pod may not use ServiceAccountToken volume projections' % name)
        return
    sa_name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = spec["serviceAccount"] = sa_name
    sa = service_accounts(sa_name)
    if sa is None:
        raise ApiError(403, 'pods "%s" is forbidden: error looking up service account %s/%s: serviceaccount "%s" not found'
                       % (name, pod["metadata"]["namespace"], sa_name, sa_name))
    automount = spec.get("automountServiceAccountToken", sa.get("automountServiceAccountToken", True))
    if automount is False:
        return
    containers = all_containers(spec)
    if any(m.get("mountPath") == SA_MOUNT for c in containers for m in c.get("volumeMounts") or []):
        return  # the pod mounts its own credentials there
    volume = "kube-api-access-" + random_suffix()
    spec.setdefault("volumes", []).append({"name": volume, "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
            "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}})
    for c in containers:
        c.setdefault("volumeMounts", []).append({"name": volume, "readOnly": True, "mountPath": SA_MOUNT})


def qos_class(spec):
    """GetPodQOS of pkg/apis/core/helper/qos: sums over init and regular containers."""
    requests, limits, guaranteed = {}, {}, True
    for c in all_containers(spec):
        res = c.get("resources") or {}
        for name, q in (res.get("requests") or {}).items():
            if name in ("cpu", "memory") and quantity(q) != 0:
                requests[name] = requests.get(name, 0) + quantity(q)
        found = set()
        for name, q in (res.get("limits") or {}).items():
            if name in ("cpu", "memory") and quantity(q) != 0:
                found.add(name)
                limits[name] = limits.get(name, 0) + quantity(q)
        if found != {"cpu", "memory"}:
            guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    if guaranteed and all(limits.get(k) == v for k, v in requests.items()):
        return "Guaranteed"
    return "Burstable"


SUFFIXES = {"": 1, "m": Decimal("0.001"), "k": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12,
            "P": 10 ** 15, "E": 10 ** 18, "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30,
            "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60, "n": Decimal("1e-9"), "u": Decimal("1e-6")}


def quantity(q):
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", str(q).strip())
    if not m or m.group(2) not in SUFFIXES:
        raise ApiError(400, "quantities must match the regular expression "
                            "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': %r" % q)
    return Decimal(m.group(1)) * SUFFIXES[m.group(2)]


def validate(res, pod):
    """The subset of ValidatePod a client can get wrong; raises 422 Invalid."""
    name = pod["metadata"].get("name", "")
    spec = pod.get("spec") or {}
    causes = []
    if not DNS1123_SUBDOMAIN.match(name) or len(name) > 253:
        causes.append(("metadata.name", "FieldValueInvalid",
                       "Invalid value: %r: a lowercase RFC 1123 subdomain must consist of lower case "
                       "alphanumeric characters, '-' or '.'" % name))
    if not spec.get("containers"):
        causes.append(required("spec.containers"))
    seen = set()
    for field in ("initContainers", "containers"):
        for n, c in enumerate(spec.get(field) or []):
            where = "spec.%s[%d]" % (field, n)
            cname = c.get("name")
            if not cname:
                causes.append(required(where + ".name"))
            elif not DNS1123_LABEL.match(cname):
                causes.append((where + ".name", "FieldValueInvalid", "Invalid value: %r: a lowercase RFC 1123 label" % cname))
            elif cname in seen:
                causes.append((where + ".name", "FieldValueDuplicate", "Duplicate value: %r" % cname))
            seen.add(cname)
            if not c.get("image"):
                causes.append(required(where + ".image"))
    if spec.get("restartPolicy") not in (None, "Always", "OnFailure", "Never"):
        causes.append(("spec.restartPolicy", "FieldValueNotSupported", "Unsupported value: %r" % spec["restartPolicy"]))
    volumes = {v.get("name") for v in spec.get("volumes") or []}
    for c in all_containers(spec):
        for m in c.get("volumeMounts") or []:
            if m.get("name") not in volumes:
                causes.append(("spec.containers[].volumeMounts.name", "FieldValueNotFound",
                               "Not found: %r" % m.get("name")))
    if causes:
        raise invalid(res, name, causes)


def check_update(res, old, new):
    """Pod updates may change only images, activeDeadlineSeconds, tolerations (additions) and
    terminationGracePeriodSeconds; anything else is 422, as in ValidatePodUpdate."""
    def mutable_cleared(spec):
        spec = copy.deepcopy(spec)
        for c in all_containers(spec) + (spec.get("ephemeralContainers") or []):
            c.pop("image", None)
        for k in ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds"):
            spec.pop(k, None)
        return spec
    if mutable_cleared(old.get("spec") or {}) != mutable_cleared(new.get("spec") or {}):
        raise invalid(res, old["metadata"]["name"], [(
            "spec", "FieldValueForbidden",
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
            "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
            "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
            "(allow it to be set to 1 if it was previously negative)")])


def effective_grace(pod, options):
    """podStrategy.CheckGracefulDelete."""
    grace = options.get("gracePeriodSeconds")
    if grace is None:
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    if not pod["spec"].get("nodeName") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        grace = 0
    return 1 if grace < 0 else grace

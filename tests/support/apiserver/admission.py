"""Behaviour of single resources, as the real control plane provides it: CertificateSigningRequests
(creation, approval, the csrapproving controller's auto-approval and the signers), TokenRequests,
and the NodeRestriction checks that need the stored object."""

import base64
import copy
import json
import time
import uuid

import pki as pkimod
from common import ApiError, invalid, not_found, now_rfc3339, required

KUBELET_CLIENT = "kubernetes.io/kube-apiserver-client-kubelet"
API_CLIENT = "kubernetes.io/kube-apiserver-client"
KUBELET_SERVING = "kubernetes.io/kubelet-serving"
KNOWN_USAGES = {"signing", "digital signature", "content commitment", "key encipherment",
                "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
                "decipher only", "any", "server auth", "client auth", "code signing",
                "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
                "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"}


class Hooks:
    def __init__(self, store, pki, opts, log):
        self.store, self.pki, self.opts, self.log = store, pki, opts, log
        self.cert_duration = opts.cert_duration  # /_test/sign-with-duration changes it
        self.token_users = {}  # /_test/token-users
        self.kubelet_access = []  # /_test/kubelet-access

    # ---- called by the registry, under the store lock ----

    def before_create(self, res, obj, user):
        if res.plural == "certificatesigningrequests":
            self._csr_create(res, obj, user)

    def before_update(self, res, old, new, sub, user):
        node = user.node if user else None
        if res.plural == "pods" and node and sub == "status" and old["spec"].get("nodeName") != node:
            raise ApiError(403, 'pods "%s" is forbidden: node "%s" can only update pod status for pods '
                           'with spec.nodeName set to itself' % (old["metadata"]["name"], node))
        if res.plural == "certificatesigningrequests":
            new["spec"] = copy.deepcopy(old["spec"])  # immutable; only the signer writes the status

    def before_delete(self, res, obj, user):
        node = user.node if user else None
        if res.plural == "pods" and node and obj["spec"].get("nodeName") != node:
            raise ApiError(403, 'pods "%s" is forbidden: node "%s" can only delete pods with spec.nodeName '
                           'set to itself' % (obj["metadata"]["name"], node))

    def after_write(self, res, obj, user):
        if res.plural != "certificatesigningrequests":
            return
        conditions = (obj.get("status") or {}).get("conditions") or []
        if not conditions and self.opts.auto_approve_csr and self._auto_approvable(obj):
            obj = self._set_conditions(res, obj, [{
                "type": "Approved", "status": "True", "reason": "AutoApproved",
                "message": "Auto approving kubelet client certificate after SubjectAccessReview."}])
        self._sign(res, obj)

    # ---- CertificateSigningRequests ----

    def _csr_create(self, res, csr, user):
        spec = csr.get("spec") or {}
        name = csr["metadata"]["name"]
        causes = [required("spec." + f) for f in ("request", "signerName", "usages") if not spec.get(f)]
        for n, u in enumerate(spec.get("usages") or []):
            if u not in KNOWN_USAGES:
                causes.append(("spec.usages[%d]" % n, "FieldValueNotSupported", "Unsupported value: %r" % u))
        if spec.get("expirationSeconds") is not None and spec["expirationSeconds"] < 600:
            causes.append(("spec.expirationSeconds", "FieldValueInvalid",
                           "Invalid value: %d: may not specify a duration less than 600 seconds" % spec["expirationSeconds"]))
        if spec.get("request"):
            try:
                self.pki.inspect_csr(base64.b64decode(spec["request"], validate=True).decode())
            except (ValueError, UnicodeDecodeError) as e:
                causes.append(("spec.request", "FieldValueInvalid", "Invalid value: []byte{...}: %s" % e))
        if causes:
            raise invalid(res, name, causes)
        # Who asked is the server's to say, not the client's.
        spec["username"] = user.name if user else ""
        spec["groups"] = user.groups if user else []
        spec.pop("uid", None)
        spec.pop("extra", None)
        if user and user.extra:
            spec["extra"] = user.extra
        csr["spec"] = spec
        csr["status"] = {}

    def approve(self, res, name, body):
        """PUT .../approval: only the conditions of the body count."""
        old = self.store.get(res.key, "", name)
        if old is None:
            raise ApiError(404, '%s.%s "%s" not found' % (res.plural, res.group, name))
        conditions = copy.deepcopy((body.get("status") or {}).get("conditions") or [])
        types = [c.get("type") for c in conditions]
        causes = [("status.conditions[%d].type" % n, "FieldValueNotSupported", "Unsupported value: %r" % t)
                  for n, t in enumerate(types) if t not in ("Approved", "Denied", "Failed")]
        if "Approved" in types and "Denied" in types:
            causes.append(("status.conditions", "FieldValueInvalid",
                           "Invalid value: Approved and Denied conditions are mutually exclusive"))
        if causes:
            raise invalid(res, name, causes)
        obj = self._set_conditions(res, old, conditions)
        self._sign(res, obj)
        return self.store.get(res.key, "", name)

    def _set_conditions(self, res, csr, conditions):
        csr = copy.deepcopy(csr)
        for c in conditions:
            c.setdefault("status", "True")
            c.setdefault("lastUpdateTime", now_rfc3339())
            c.setdefault("lastTransitionTime", now_rfc3339())
        csr.setdefault("status", {})["conditions"] = conditions
        return self.store.write(res.key, "", csr["metadata"]["name"], csr, "MODIFIED")

    def _auto_approvable(self, csr):
        """The csrapproving controller: kubelet client CSRs from bootstrappers (new nodes) and
        from the node itself (renewal)."""
        spec = csr["spec"]
        if spec.get("signerName") != KUBELET_CLIENT:
            return False
        info = self._inspect(csr)
        if self._signer_refusal(spec, info) is not None:
            return False
        groups = spec.get("groups") or []
        return "system:bootstrappers" in groups or "system:masters" in groups or spec.get("username") == info["cn"]

    def _inspect(self, csr):
        return self.pki.inspect_csr(base64.b64decode(csr["spec"]["request"]).decode())

    @staticmethod
    def _signer_refusal(spec, info):
        """Why the signer refuses the request, "" for an unknown signer (nothing signs it), None if
        it signs."""
        signer, usages = spec.get("signerName"), set(spec.get("usages") or [])
        is_node = info["o"] == ["system:nodes"] and info["cn"].startswith("system:node:") and len(info["cn"]) > 12
        if signer == KUBELET_CLIENT:
            if not is_node:
                return 'subject must be "system:node:<name>" in organization "system:nodes"'
            if info["sans"]:
                return "subjectAltNames are not allowed"
            if usages not in ({"digital signature", "client auth"},
                              {"digital signature", "key encipherment", "client auth"}):
                return "usages must be [digital signature, client auth] (key encipherment allowed)"
            return None
        if signer == API_CLIENT:
            return None if "client auth" in usages else "usages must include client auth"
        if signer == KUBELET_SERVING:
            if not is_node or not info["sans"] or "server auth" not in usages or "client auth" in usages:
                return "a node's name, a DNS or IP subjectAltName and server auth usage are required"
            return None
        return ""

    def _sign(self, res, csr):
        status = csr.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        if conditions.get("Approved") != "True" or "Failed" in conditions or "Denied" in conditions or \
                status.get("certificate"):
            return
        spec = csr["spec"]
        why = self._signer_refusal(spec, self._inspect(csr))
        if why == "":
            return
        csr = copy.deepcopy(csr)
        if why is None:
            seconds = min(self.cert_duration, spec.get("expirationSeconds") or self.cert_duration)
            pem = self.pki.sign_csr(base64.b64decode(spec["request"]).decode(), seconds,
                                    spec.get("usages") or [], self.opts.cert_backdate)
            csr["status"]["certificate"] = base64.b64encode(pem.encode()).decode()
            self.log("signed CSR %s for %d s" % (csr["metadata"]["name"], seconds))
        else:
            csr["status"]["conditions"].append({
                "type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": why,
                "lastUpdateTime": now_rfc3339(), "lastTransitionTime": now_rfc3339()})
        self.store.write(res.key, "", csr["metadata"]["name"], csr, "MODIFIED")

    # ---- TokenRequest ----

    def token_request(self, sa_res, pod_res, ns, sa_name, body, user):
        sa = self.store.get(sa_res.key, ns, sa_name)
        if sa is None:
            raise not_found(sa_res, sa_name)
        spec = copy.deepcopy(body.get("spec") or {})
        seconds = spec.setdefault("expirationSeconds", 3600)
        if not isinstance(seconds, int) or seconds < 600 or seconds > 2 ** 32:
            raise ApiError(422, 'TokenRequest.authentication.k8s.io "%s" is invalid: spec.expirationSeconds: '
                           'Invalid value: %s: may not specify a duration less than 10 minutes or larger than 2^32 seconds'
                           % (sa_name, seconds), "Invalid")
        if not spec.get("audiences"):
            spec["audiences"] = [pkimod.API_AUDIENCE]
        ref = spec.get("boundObjectRef")
        now = int(time.time())
        k8s = {"namespace": ns, "serviceaccount": {"name": sa_name, "uid": sa["metadata"]["uid"]}}
        if ref:
            if ref.get("kind") != "Pod":
                raise ApiError(400, "cannot bind token to a %s: only pods are supported by this test API server" % ref.get("kind"))
            pod = self.store.get(pod_res.key, ns, ref.get("name"))
            if pod is None:
                raise not_found(pod_res, ref.get("name"))
            if ref.get("uid") and ref["uid"] != pod["metadata"]["uid"]:
                raise ApiError(409, "the UID in the bound object reference (%s) does not match the UID in record. "
                               "The object might have been deleted and then recreated" % ref["uid"], "Conflict")
            if user.node and pod["spec"].get("nodeName") != user.node:
                raise ApiError(403, 'serviceaccounts "%s" is forbidden: node requested token bound to a pod '
                               'scheduled on a different node' % sa_name)
            k8s["pod"] = {"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
        elif user.node:
            raise ApiError(403, 'serviceaccounts "%s" is forbidden: node requested token not bound to a pod' % sa_name)
        claims = {"aud": spec["audiences"], "exp": now + seconds, "iat": now, "nbf": now,
                  "iss": pkimod.ISSUER, "jti": str(uuid.uuid4()), "kubernetes.io": k8s,
                  "sub": "system:serviceaccount:%s:%s" % (ns, sa_name)}
        return {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": None},
                "spec": spec, "status": {"token": self.pki.issue_token(claims),
                                         "expirationTimestamp": now_rfc3339(seconds)}}


    # ---- TokenReview and SubjectAccessReview (a node's API delegating its auth) ----

    def review(self, res, obj):
        spec = obj.get("spec") or {}
        out = {"kind": res.kind, "apiVersion": res.api_version,
               "metadata": {"creationTimestamp": None}, "spec": spec}
        if res.plural == "tokenreviews":
            out["status"] = self._token_review(spec.get("token") or "")
            self.log("TokenReview: authenticated=%s" % out["status"]["authenticated"])
            return out
        if not spec.get("user") and not spec.get("groups"):
            raise invalid(res, "", [("spec.user", "FieldValueRequired",
                                     "Required value: at least one of user or group must be specified")])
        if bool(spec.get("resourceAttributes")) == bool(spec.get("nonResourceAttributes")):
            raise invalid(res, "", [("spec.resourceAttributes", "FieldValueRequired",
                                     "Required value: exactly one of nonResourceAttributes or resourceAttributes must be specified")])
        out["status"] = self._access_review(spec)
        self.log("SubjectAccessReview %s: allowed=%s" % (json.dumps(spec, sort_keys=True), out["status"]["allowed"]))
        return out

    def _token_review(self, token):
        from auth import MASTERS
        if token and token == self.opts.admin_token:
            return {"authenticated": True, "user": {"username": "admin", "groups": [MASTERS, "system:authenticated"]}}
        if token in self.token_users:
            user = copy.deepcopy(self.token_users[token])
            user.setdefault("groups", [])
            user["groups"] = user["groups"] + ["system:authenticated"]
            return {"authenticated": True, "user": user}
        claims = self.pki.verify_token(token) if token else None
        if claims:
            k8s = claims.get("kubernetes.io", {})
            ns, sa = k8s.get("namespace"), k8s.get("serviceaccount", {}).get("name")
            return {"authenticated": True, "audiences": claims.get("aud", []), "user": {
                "username": "system:serviceaccount:%s:%s" % (ns, sa),
                "uid": k8s.get("serviceaccount", {}).get("uid", ""),
                "groups": ["system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"]}}
        return {"authenticated": False, "user": {}, "error": "invalid bearer token"}

    def _access_review(self, spec):
        from auth import MASTERS
        if MASTERS in (spec.get("groups") or []):
            return {"allowed": True, "reason": "system:masters may do anything"}
        ra = spec.get("resourceAttributes") or {}
        for rule in self.kubelet_access:
            if rule.get("user") == spec.get("user") and ra.get("resource") == "nodes" and \
                    ra.get("group", "") == "" and rule.get("verb", "*") in ("*", ra.get("verb")) and \
                    rule.get("subresource", "*") in ("*", ra.get("subresource", "")):
                return {"allowed": True, "reason": "allowed by the test's kubelet-access rules"}
        return {"allowed": False}

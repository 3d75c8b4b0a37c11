"""Certificates with the openssl CLI (test CA, serving and admin certificates, CSR signing) and
the service-account tokens the double issues (JWT-shaped, HMAC-signed, so any restart of the
double still accepts the tokens it issued before)."""

import base64
import datetime
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import tempfile
import time

API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
ISSUER = API_AUDIENCE


def openssl(*args, stdin=None):
    """Runs openssl; returns (ok, stdout + stderr)."""
    p = subprocess.run(["openssl", *args], input=stdin, capture_output=True, timeout=30)
    return p.returncode == 0, (p.stdout + p.stderr).decode("utf-8", "replace")


def must(*args):
    ok, out = openssl(*args)
    if not ok:
        raise RuntimeError("openssl %s failed: %s" % (" ".join(args), out))
    return out


class Pki:
    """The files under <dir>/pki: ca.crt/key, server.crt/key, admin.crt/key, sa.key (token HMAC)."""

    def __init__(self, state_dir):
        self.dir = os.path.join(state_dir, "pki")
        os.makedirs(self.dir, exist_ok=True)
        p = self.path
        if not os.path.exists(p("ca.crt")):
            must("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", p("ca.key"), "-out", p("ca.crt"), "-days", "3650",
                 "-subj", "/CN=tinylet-test-apiserver-ca",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
        if not os.path.exists(p("server.crt")):
            self.issue("server", "/CN=kube-apiserver",
                       "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth")
        if not os.path.exists(p("admin.crt")):
            self.issue("admin", "/O=system:masters/CN=admin", "extendedKeyUsage=clientAuth")
        if not os.path.exists(p("sa.key")):
            with open(p("sa.key"), "wb") as f:
                f.write(secrets.token_bytes(32))
        with open(p("ca.crt")) as f:
            self.ca_pem = f.read()
        with open(p("sa.key"), "rb") as f:
            self._sa_key = f.read()

    def path(self, name):
        return os.path.join(self.dir, name)

    def issue(self, name, subject, extensions):
        """A key and a certificate signed by the CA, valid for a year."""
        p = self.path
        must("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", p(name + ".key"), "-out", p(name + ".csr"), "-subj", subject)
        with open(p(name + ".ext"), "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                    + extensions + "\n")
        must("x509", "-req", "-in", p(name + ".csr"), "-CA", p("ca.crt"), "-CAkey", p("ca.key"),
             "-set_serial", str(secrets.randbits(63)), "-days", "365", "-sha256",
             "-extfile", p(name + ".ext"), "-out", p(name + ".crt"))

    # ---- CSRs ----

    def inspect_csr(self, pem):
        """Checks a PEM CERTIFICATE REQUEST and its self-signature; returns
        {"cn": str, "o": [str], "sans": bool} or raises ValueError(why)."""
        if "-----BEGIN CERTIFICATE REQUEST-----" not in pem:
            raise ValueError("PEM block type must be CERTIFICATE REQUEST")
        ok, out = openssl("req", "-noout", "-verify", "-subject", "-nameopt", "multiline",
                          stdin=pem.encode())
        if not ok or "verify OK" not in out:
            raise ValueError("the certificate request is malformed or its signature is invalid")
        cn, orgs = "", []
        for line in out.splitlines():
            key, _, value = line.strip().partition("=")
            if key.strip() == "commonName":
                cn = value.strip()
            elif key.strip() == "organizationName":
                orgs.append(value.strip())
        _, text = openssl("req", "-noout", "-text", stdin=pem.encode())
        return {"cn": cn, "o": orgs, "sans": "Subject Alternative Name" in text}

    def sign_csr(self, pem, seconds, usages, backdate):
        """Signs with the CA for `seconds` (openssl ca: x509 -req only knows whole days); returns
        the certificate PEM. Extensions follow the CSR's usages; SANs are copied from the CSR.
        Dates as the real signer sets them: notBefore backdated by `backdate` seconds (clock
        skew), notAfter = now + seconds for certificates under 8 h, else now + seconds - backdate."""
        eku = {"client auth": "clientAuth", "server auth": "serverAuth",
               "code signing": "codeSigning", "email protection": "emailProtection"}
        ku = {"digital signature": "digitalSignature", "key encipherment": "keyEncipherment",
              "content commitment": "nonRepudiation", "key agreement": "keyAgreement",
              "cert sign": "keyCertSign", "crl sign": "cRLSign", "data encipherment": "dataEncipherment"}
        ext = ["basicConstraints=critical,CA:FALSE"]
        if any(u in ku for u in usages):
            ext.append("keyUsage=critical," + ",".join(ku[u] for u in usages if u in ku))
        if any(u in eku for u in usages):
            ext.append("extendedKeyUsage=" + ",".join(eku[u] for u in usages if u in eku))
        fmt = "%Y%m%d%H%M%SZ"
        now = datetime.datetime.now(datetime.timezone.utc)
        start = (now - datetime.timedelta(seconds=backdate)).strftime(fmt)
        short = seconds < 8 * 3600
        end = (now + datetime.timedelta(seconds=seconds if short else seconds - backdate)).strftime(fmt)
        with tempfile.TemporaryDirectory(dir=self.dir) as tmp:
            j = lambda n: os.path.join(tmp, n)  # noqa: E731
            open(j("index.txt"), "w").close()
            with open(j("serial"), "w") as f:
                f.write("%016X\n" % secrets.randbits(63))
            with open(j("csr.pem"), "w") as f:
                f.write(pem)
            with open(j("ca.cnf"), "w") as f:
                f.write("[ca]\ndefault_ca=signer\n[signer]\ndatabase=%s\nserial=%s\n"
                        "new_certs_dir=%s\ncertificate=%s\nprivate_key=%s\ndefault_md=sha256\n"
                        "policy=anything\nunique_subject=no\ncopy_extensions=copy\n"
                        "email_in_dn=no\nx509_extensions=ext\n[anything]\ncommonName=optional\n"
                        "organizationName=optional\n[ext]\n%s\n"
                        % (j("index.txt"), j("serial"), tmp, self.path("ca.crt"),
                           self.path("ca.key"), "\n".join(ext)))
            must("ca", "-batch", "-config", j("ca.cnf"), "-in", j("csr.pem"), "-out", j("crt.pem"),
                 "-startdate", start, "-enddate", end, "-notext", "-preserveDN")
            with open(j("crt.pem")) as f:
                return f.read()

    # ---- service-account tokens ----

    def issue_token(self, claims):
        """A JWT (HS256 with the double's own key) carrying the real token's claims."""
        header = b64url(json.dumps({"alg": "HS256", "kid": "tinylet-test"}).encode())
        payload = b64url(json.dumps(claims, sort_keys=True).encode())
        signing_input = header + "." + payload
        sig = hmac.new(self._sa_key, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + b64url(sig)

    def verify_token(self, token):
        """The claims of a token this double issued, if its signature holds and it has not
        expired and is meant for the API server; else None."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        want = hmac.new(self._sa_key, (parts[0] + "." + parts[1]).encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(want, unb64url(parts[2])):
                return None
            claims = json.loads(unb64url(parts[1]))
        except ValueError:
            return None
        if claims.get("exp", 0) < time.time() or API_AUDIENCE not in claims.get("aud", []):
            return None
        return claims


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))

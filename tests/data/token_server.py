#!/usr/bin/env python3
"""A minimal Docker registry token server for the registry tests (tests/support/registry.rs).

Implements the token flow of https://distribution.github.io/distribution/spec/auth/token/ as far
as distribution 2.8's `auth: token` needs it:

  GET  /token?service=S&scope=repository:NAME:pull,push[&scope=...]   (Basic credentials)
  POST /token   grant_type=password&username=U&password=P&service=S&scope=...   (OAuth2 form)

Checks the credentials against --user/--password-file, then issues an RS256 JWT whose header
carries the signing certificate in `x5c` (distribution verifies that chain against the
`rootcertbundle` of its config) and whose claims grant exactly the requested actions.

Standard library only: signing shells out to `openssl dgst -sha256 -sign` (RSASSA-PKCS1-v1_5 over
SHA-256 is RS256), so no PyJWT or cryptography package is needed.

Serves HTTPS on 127.0.0.1 (port 0 = any free one) and prints `listening on PORT` once bound.
Appends one line per request to --log (user, scopes, outcome; never a password or a token).
"""

import argparse
import base64
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parse_scope(scope):
    """`repository:test/busybox:pull,push` -> access entry (names may contain ':' for ports)."""
    parts = scope.split(":")
    if len(parts) < 3:
        return None
    typ, actions = parts[0], parts[-1]
    name = ":".join(parts[1:-1])
    return {"type": typ, "name": name, "actions": [a for a in actions.split(",") if a]}


class Server:
    def __init__(self, args):
        self.args = args
        self.user = args.user
        with open(args.password_file) as f:
            self.password = f.read().strip()
        with open(args.signing_cert) as f:
            pem = f.read()
        body = "".join(
            l for l in pem.splitlines() if l and not l.startswith("-----")
        )
        self.x5c = [body]  # base64 (standard, padded) DER, as JWS x5c wants
        self.log_lock = threading.Lock()

    def log(self, line):
        with self.log_lock:
            with open(self.args.log, "a") as f:
                f.write(line + "\n")

    def sign(self, signing_input):
        out = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.args.signing_key],
            input=signing_input,
            capture_output=True,
            check=True,
        )
        return out.stdout

    def issue(self, user, service, scopes):
        now = int(time.time())
        access = [a for a in (parse_scope(s) for s in scopes) if a is not None]
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.x5c}
        claims = {
            "iss": self.args.issuer,
            "sub": user,
            "aud": service,
            "exp": now + self.args.ttl,
            "nbf": now - 10,
            "iat": now,
            "jti": b64url(os.urandom(12)),
            "access": access,
        }
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        token = signing_input + "." + b64url(self.sign(signing_input.encode()))
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.args.ttl,
            "issued_at": issued,
        }


def make_handler(server):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # the --log file is the record; keep stderr quiet
            pass

        def reply(self, code, obj, extra_headers=()):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra_headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def unauthorized(self, user, scopes, why):
            server.log("method=%s user=%s scopes=%s result=401 (%s)"
                       % (self.command, user or "-", " ".join(scopes) or "-", why))
            self.reply(
                401,
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                [("WWW-Authenticate", 'Basic realm="tinylet-test-token"')],
            )

        def grant(self, user, password, service, scopes):
            if user is None:
                return self.unauthorized(user, scopes, "no credentials")
            if user != server.user or password != server.password:
                return self.unauthorized(user, scopes, "bad credentials")
            if service != server.args.service:
                server.log("method=%s user=%s service=%s result=400 (unknown service)"
                           % (self.command, user, service))
                return self.reply(400, {"errors": [{"code": "DENIED", "message": "unknown service"}]})
            server.log("method=%s user=%s scopes=%s result=200"
                       % (self.command, user, " ".join(scopes) or "-"))
            self.reply(200, server.issue(user, service, scopes))

        def basic_creds(self):
            h = self.headers.get("Authorization", "")
            if not h.lower().startswith("basic "):
                return None, None
            try:
                user, _, password = base64.b64decode(h[6:].strip()).decode().partition(":")
            except Exception:
                return None, None
            return user, password

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/token":
                return self.reply(404, {"errors": [{"code": "NOT_FOUND"}]})
            q = urllib.parse.parse_qs(url.query)
            user, password = self.basic_creds()
            self.grant(user, password, q.get("service", [""])[0], q.get("scope", []))

        def do_POST(self):
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            if url.path != "/token":
                return self.reply(404, {"errors": [{"code": "NOT_FOUND"}]})
            scopes = [s for v in form.get("scope", []) for s in v.split(" ") if s]
            if form.get("grant_type", [""])[0] != "password":
                server.log("method=POST grant_type=%s result=400 (unsupported grant)"
                           % form.get("grant_type", ["-"])[0])
                return self.reply(400, {"error": "unsupported_grant_type"})
            user = form.get("username", [None])[0]
            password = form.get("password", [None])[0]
            self.grant(user, password, form.get("service", [""])[0], scopes)

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls-cert", required=True)
    p.add_argument("--tls-key", required=True)
    p.add_argument("--signing-cert", required=True)
    p.add_argument("--signing-key", required=True)
    p.add_argument("--issuer", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password-file", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--ttl", type=int, default=300)
    args = p.parse_args()

    server = Server(args)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(server))
    httpd.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    print("listening on %d" % httpd.server_address[1], flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    sys.exit(main())

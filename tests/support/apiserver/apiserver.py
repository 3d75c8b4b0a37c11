#!/usr/bin/env python3
"""A Kubernetes API-server double for tinylet's integration tests: HTTPS with a private test CA,
real authentication and node authorization rules, a global resourceVersion, watches with
bookmarks and 410 Expired, graceful pod deletion, strategic merge patch, CSR signing and
TokenRequests; objects persist under --dir, so a test can kill -9 it and start it again.

  python3 apiserver.py --dir /tmp/apid --port 6443 --admin-token secret --auto-approve-csr

It prints `listening on https://127.0.0.1:<port>` and writes <dir>/port once it accepts
connections; <dir>/pki/ca.crt is the CA, <dir>/pki/admin.{crt,key} an admin client certificate.
Every request is one line of <dir>/apiserver.log. Test hooks (admin only) live under /_test/.
Stdlib only, plus kubernetes_validate and the openssl CLI."""

import argparse
import collections
import json
import os
import random
import secrets
import socket
import ssl
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from admission import Hooks  # noqa: E402
from auth import authenticate  # noqa: E402
from common import ApiError, K8S_MINOR, Violations, now_rfc3339, status_body  # noqa: E402
from pki import Pki  # noqa: E402
from registry import Registry  # noqa: E402
from routes import Router, expired_event, watch_events, watch_timeout  # noqa: E402
from store import Store  # noqa: E402

PUBLIC = {"/healthz", "/readyz", "/livez", "/version"}
VERSION = {"major": "1", "minor": K8S_MINOR, "gitVersion": "v1.%s.0" % K8S_MINOR,
           "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25.0", "compiler": "gc",
           "platform": "linux/amd64", "emulationMajor": "1", "emulationMinor": K8S_MINOR,
           "minCompatibilityMajor": "1", "minCompatibilityMinor": str(int(K8S_MINOR) - 1)}
HOSTILE_MODES = ("slow", "truncated", "oversized", "invalid-json", "wrong-content-type", "5xx",
                 "wrong-shape", "empty-object")
MAX_BODY = 3 * 1024 * 1024  # the real server's limit
NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME: expiry is the authenticator's call (401)


class DropConnection(Exception):
    """End the connection without a proper end of response (/_test/close-watches)."""


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, opts):
        self.opts = opts
        self.log_file = open(os.path.join(opts.dir, "apiserver.log"), "a", buffering=1)
        self.log_lock = threading.Lock()
        self.pki = Pki(opts.dir)
        self.store = Store(os.path.join(opts.dir, "state.json"))
        self.hooks = Hooks(self.store, self.pki, opts, self.log)
        self.registry = Registry(self.store, self.pki, self.hooks)
        self.registry.bootstrap()
        self.router = Router(self)
        self.violations = Violations(self.log)
        self.requests = collections.deque(maxlen=20000)
        self.failures = []  # [status, remaining count, path prefix] from /_test/fail
        self.hostile = None  # [mode, until (monotonic), path prefix] from /_test/hostile
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(self.pki.path("server.crt"), self.pki.path("server.key"))
        self.tls.load_verify_locations(self.pki.path("ca.crt"))
        self.tls.verify_mode = ssl.CERT_OPTIONAL
        self.tls.verify_flags |= NO_CHECK_TIME
        self.tls.set_alpn_protocols(["http/1.1"])
        super().__init__(("127.0.0.1", opts.port), Handler)

    def log(self, line):
        with self.log_lock:
            self.log_file.write("%s %s\n" % (now_rfc3339(), line))

    def finish_request(self, request, client_address):
        # The TLS handshake runs in the connection's own thread, so a slow client blocks no one.
        request.settimeout(120)  # idle keep-alive connections
        try:
            conn = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.log("TLS handshake with %s:%d failed: %s" % (client_address[0], client_address[1], e))
            return
        try:
            Handler(conn, client_address, self)
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def fail_injected(self, path):
        with self.store.cond:
            for f in self.failures:
                if f[1] > 0 and path.startswith(f[2]):
                    f[1] -= 1
                    return f[0]
        return None

    def hostile_mode(self, path):
        with self.store.cond:
            h = self.hostile
            if h and time.monotonic() < h[1] and path.startswith(h[2]):
                return h[0]
        return None

    # ---- watch ----

    def watch(self, req, res, ns, query):
        matches = self.router.matcher(res, ns, query)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        initial_marker = query.get("sendInitialEvents") == "true"
        rv_param = query.get("resourceVersion") or ""
        end = time.monotonic() + watch_timeout(query)
        interval = self.opts.bookmark_interval
        events, expired = [], None
        with self.store.cond:
            epoch = self.store.watch_epoch
            if rv_param in ("", "0") or initial_marker:
                # "0" = any, unset = most recent: both start with the current state.
                events = [("ADDED", o) for o in self.store.list(res.key, ns) if matches(o)]
                last = self.store.rv
            else:
                try:
                    last = int(rv_param)
                except ValueError:
                    raise ApiError(400, "invalid resource version %r" % rv_param)
                try:
                    self.store.events_after(last, res.key)
                except ApiError as e:
                    expired = e
        req.start_chunked()
        if expired:
            req.send_chunk(expired_event(expired))
            req.end_chunked()
            return
        for kind, obj in events:
            req.send_chunk({"type": kind, "object": obj})
        if initial_marker and bookmarks:
            req.send_chunk(self.bookmark(res, last, {"k8s.io/initial-events-end": "true"}))
        next_bookmark = time.monotonic() + interval
        while True:
            with self.store.cond:
                while True:
                    if self.store.watch_epoch != epoch:
                        raise DropConnection()
                    try:
                        new = self.store.events_after(last, res.key)
                    except ApiError as e:  # compacted while this watcher lagged behind
                        req.send_chunk(expired_event(e))
                        req.end_chunked()
                        return
                    now = time.monotonic()
                    if new or now >= end or (bookmarks and now >= next_bookmark):
                        break
                    self.store.cond.wait(min(end, next_bookmark if bookmarks else end) - now)
                last = self.store.rv
            for kind, obj in watch_events(new, matches):
                req.send_chunk({"type": kind, "object": obj})
            if time.monotonic() >= end:
                req.end_chunked()
                return
            if bookmarks and time.monotonic() >= next_bookmark:
                req.send_chunk(self.bookmark(res, last))
                next_bookmark = time.monotonic() + interval

    @staticmethod
    def bookmark(res, rv, annotations=None):
        meta = {"resourceVersion": str(rv)}
        if annotations:
            meta["annotations"] = annotations
        return {"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta}}

    # ---- /_test/ ----

    def test_endpoint(self, method, path, query, body=b""):
        if method == "GET" and path == "/_test/requests":
            with self.store.cond:
                return {"items": list(self.requests)}
        if method == "GET" and path == "/_test/violations":
            return {"items": self.violations.all()}
        if method != "POST":
            raise ApiError(405, "the server does not allow this method on the requested resource")
        with self.store.cond:
            if path == "/_test/requests/clear":
                self.requests.clear()
            elif path == "/_test/compact":
                self.store.compact()
            elif path == "/_test/close-watches":
                self.store.watch_epoch += 1
                self.store.cond.notify_all()
            elif path == "/_test/fail":
                self.failures = [f for f in self.failures if f[1] > 0]
                self.failures.append([int(query.get("status", "503")), int(query.get("count", "1")),
                                      query.get("path", "/")])
            elif path == "/_test/hostile":
                mode, secs = query.get("mode", ""), float(query.get("seconds", "5"))
                if mode and mode not in HOSTILE_MODES:
                    raise ApiError(400, "unknown hostile mode %r" % mode)
                self.hostile = [mode, time.monotonic() + secs, query.get("path", "/")] if mode else None
            elif path == "/_test/sign-with-duration":
                self.hooks.cert_duration = int(query["seconds"])
            elif path == "/_test/token-users":
                # {"<token>": {"username": ..., "groups": [...], "uid": ...}}: what TokenReviews say.
                self.hooks.token_users = json.loads(body or b"{}")
            elif path == "/_test/kubelet-access":
                # [{"user": ..., "verb": "get"|"*", "subresource": "proxy"|"*"}]: what
                # SubjectAccessReviews on nodes/<subresource> allow.
                self.hooks.kubelet_access = json.loads(body or b"[]")
            else:
                raise ApiError(404, "no such test endpoint")
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tinylet-test-apiserver"

    def do_GET(self):
        self.serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, fmt, *args):
        pass  # one line per request is written by serve()

    def serve(self):
        srv = self.server
        started, stamp = time.time(), now_rfc3339()
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        user, self.code, self.streaming, self.extra_headers = None, 0, False, []
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True
                raise ApiError(413, "Request entity too large: limit is %d" % MAX_BODY, "RequestEntityTooLarge")
            body = self.rfile.read(length) if length else b""
            injected = None if url.path.startswith("/_test/") else srv.fail_injected(url.path)
            if injected:
                if injected == 429:
                    self.extra_headers = [("Retry-After", "1")]
                raise ApiError(injected, "injected failure (test)")
            if url.path in PUBLIC and self.command == "GET":
                if url.path == "/version":
                    return self.reply(200, VERSION)
                return self.reply(200, b"ok", "text/plain; charset=utf-8")
            accept = self.headers.get("Accept") or "*/*"
            if not any(t in accept for t in ("json", "*/*")):
                raise ApiError(406, "only application/json is served by this test double", "NotAcceptable")
            user = authenticate(self.headers.get("Authorization"), self.connection.getpeercert(),
                                srv.opts, srv.pki, self.pod_uid)
            if user is None:
                raise ApiError(401, "Unauthorized")
            mode = None if user.admin else srv.hostile_mode(url.path)
            if mode:
                return self.misbehave(mode)
            if url.path.startswith("/_test/"):
                if not user.admin:
                    raise ApiError(403, "only admins may use the test endpoints")
                return self.reply(200, srv.test_endpoint(self.command, url.path, query, body))
            out = srv.router.dispatch(self, user, self.command, url.path, query, body, content_type)
            if out is not None:
                self.reply(*out)
        except DropConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout):
            self.close_connection = True
        except ApiError as e:
            self.fail(e.code, e.status())
        except Exception:  # never crash on a request: answer 500 and keep the traceback
            srv.log("INTERNAL ERROR %s %s\n%s" % (self.command, self.path, traceback.format_exc()))
            self.fail(500, status_body(500, "InternalError", "internal error in the test API server (see its log)"))
        finally:
            entry = {"time": stamp, "method": self.command, "path": self.path,
                     "user": user.name if user else None, "status": self.code,
                     "contentType": content_type or None, "watch": self.streaming,
                     "ms": int((time.time() - started) * 1000)}
            if not url.path.startswith("/_test/"):  # the harness's own calls are not traffic
                with srv.store.cond:
                    srv.requests.append(entry)
            srv.log("%s %s %s user=%s ct=%s %dms" % (self.code, self.command, self.path, entry["user"],
                                                     entry["contentType"], entry["ms"]))

    def misbehave(self, mode):
        """Answers as a broken or hostile control plane would (/_test/hostile); admins are spared
        so the test can still look. Raises DropConnection where the answer ends in a hang-up."""
        if mode == "slow":  # longer than any client timeout, then nothing
            time.sleep(12)
            raise DropConnection()
        if mode == "truncated":  # promises 4 KiB, sends the start of a PodList, hangs up
            self.code = 200
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4096")
            self.end_headers()
            self.wfile.write(b'{"kind":"PodList","apiVersion":"v1","items":[{"meta')
            self.wfile.flush()
            raise DropConnection()
        if mode == "oversized":  # 96 MiB of a PodList that never closes (valid JSON so far)
            self.code = 200
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(96 << 20))
            self.end_headers()
            self.wfile.write(b'{"kind":"PodList","apiVersion":"v1","items":[')
            chunk = b" " * (1 << 20)
            for _ in range(96):
                self.wfile.write(chunk)
            raise DropConnection()
        if mode == "invalid-json":
            return self.reply(200, b'{"kind":"PodList","items":[{"metadata":}]]\n{{{', "application/json")
        if mode == "wrong-content-type":
            return self.reply(200, b"<html><body><h1>Welcome to nginx!</h1></body></html>", "text/html")
        if mode == "wrong-shape":  # valid JSON, not an object
            return self.reply(200, b'[1, "two", null]', "application/json")
        if mode == "empty-object":  # valid JSON, no kind, no items: not an empty PodList
            return self.reply(200, b"{}", "application/json")
        if mode == "5xx":
            code = random.choice([500, 502, 503, 504])
            return self.reply(code, b"<html><body>upstream error</body></html>", "text/html")
        raise ApiError(500, "unknown hostile mode %r" % mode)

    def pod_uid(self, ns, name):
        with self.server.store.cond:
            pod = self.server.store.get("pods", ns, name)
            return pod["metadata"]["uid"] if pod else None

    def fail(self, code, body):
        if self.streaming:  # headers are out: nothing sane left to say
            self.close_connection = True
            return
        self.reply(code, body)

    def reply(self, code, body, content_type="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.code = code
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in self.extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    # ---- chunked watch responses ----

    def start_chunked(self):
        self.code, self.streaming = 200, True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.flush()

    def send_chunk(self, event):
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunked(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", required=True, help="state dir: CA, certificates, objects, log")
    p.add_argument("--port", type=int, default=0, help="0: any free port (see <dir>/port)")
    p.add_argument("--bookmark-interval", type=float, default=1.0, help="seconds between watch bookmarks")
    p.add_argument("--cert-duration", type=int, default=3600, help="validity of certificates signed for CSRs (s)")
    p.add_argument("--cert-backdate", type=int, default=300,
                   help="seconds the notBefore of signed certificates is backdated (real signer: 300)")
    p.add_argument("--auto-approve-csr", action="store_true", help="approve node client CSRs like kube-controller-manager")
    p.add_argument("--bootstrap-token", action="append", default=[], help="an accepted bootstrap token, <id>.<secret>")
    p.add_argument("--admin-token", help="bearer token of the admin (default: random, in <dir>/admin-token)")
    opts = p.parse_args()
    os.makedirs(opts.dir, exist_ok=True)
    token_file = os.path.join(opts.dir, "admin-token")
    if not opts.admin_token:
        if not os.path.exists(token_file):
            with open(token_file, "w") as f:
                f.write(secrets.token_hex(16))
        with open(token_file) as f:
            opts.admin_token = f.read().strip()
    else:
        with open(token_file, "w") as f:
            f.write(opts.admin_token)
    server = ApiServer(opts)
    port = server.server_address[1]
    with open(os.path.join(opts.dir, "port.tmp"), "w") as f:
        f.write(str(port))
    os.replace(os.path.join(opts.dir, "port.tmp"), os.path.join(opts.dir, "port"))
    server.log("listening on https://127.0.0.1:%d (pid %d)" % (port, os.getpid()))
    print("listening on https://127.0.0.1:%d" % port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

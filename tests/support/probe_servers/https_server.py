"""A TLS web server with a self-signed certificate for the HTTPS probe tests.

Usage: https_server.py PORT_FILE CERT KEY
Listens on 127.0.0.1 (a free port, written to PORT_FILE). /ok answers 200, /redirect 302 to /ok,
/away 302 to another host, anything else 404.
"""
import http.server
import os
import ssl
import sys

port_file, cert, key = sys.argv[1:4]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/ok":
            self.send_response(200)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ok")
        elif self.path == "/away":
            self.send_response(302)
            self.send_header("Location", "https://elsewhere.invalid/")
        else:
            self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()

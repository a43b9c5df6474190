"""A local HTTP(S) server for the TLS and secrets tests.

Usage: https_server.py LOG [CERT KEY]. With CERT and KEY it speaks TLS. It prints its port
on the first line of stdout, then serves: POST echoes {"ok": true, "got": BODY} and GET
answers text; every request's method, path and headers are appended to LOG as one JSON line.
A request to /echo-auth fails with 500 and the Authorization header in its body (an upstream
that echoes what it got); one to /echo-auth-cut, with it padded so that the worker's 512-byte
quote of the body ends 10 bytes into the secret after "Bearer ".
"""

import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def record(self):
        with open(LOG, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path,
                                "headers": dict(self.headers.items())}) + "\n")

    def answer(self, status, kind, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self.record()
        if self.path == "/echo-auth":
            self.answer(500, "text/plain", "denied for " + self.headers.get("Authorization", ""))
            return
        if self.path == "/echo-auth-cut":
            pad = "x" * (512 - len("denied for ") - len("Bearer ") - 10)
            auth = self.headers.get("Authorization", "")
            self.answer(500, "text/plain", "denied for " + pad + auth)
            return
        try:
            got = json.loads(body)
        except ValueError:
            got = None
        self.answer(200, "application/json", json.dumps({"ok": True, "got": got}))

    def do_GET(self):
        self.record()
        self.answer(200, "text/plain", "loong-tls-page")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if len(sys.argv) > 3:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()

#!/usr/bin/env python3
"""A webhook receiver for the end-to-end tests, independent of runplane's code.

Listens on 127.0.0.1, verifies both signatures with Python's own hmac, and
appends one JSON line per request to --log. Behaviour by path:
  /ok        200
  /gone      410
  /redirect  302 to /ok
  /flaky     503 with Retry-After: 1 while the file --fail-flag exists, then 200
It stops by itself after --lifetime seconds.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", action="append", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--fail-flag", default="")
    parser.add_argument("--lifetime", type=float, default=300)
    args = parser.parse_args()
    secrets = [s.encode() for s in args.secret]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            runkey = self.headers.get("x-runkey-signature", "")
            expected = ["sha256=" + hmac.new(s, body, hashlib.sha256).hexdigest() for s in secrets]
            runkey_ok = any(hmac.compare_digest(e, got) for e in expected for got in runkey.split())
            msg_id = self.headers.get("webhook-id", "")
            ts = self.headers.get("webhook-timestamp", "")
            signed = f"{msg_id}.{ts}.".encode() + body
            std_expected = [
                "v1," + base64.b64encode(hmac.new(s, signed, hashlib.sha256).digest()).decode() for s in secrets
            ]
            std_got = self.headers.get("webhook-signature", "").split()
            std_ok = any(hmac.compare_digest(e, g) for e in std_expected for g in std_got)
            if self.path == "/gone":
                status = 410
            elif self.path == "/redirect":
                status = 302
            elif self.path == "/flaky" and args.fail_flag and os.path.exists(args.fail_flag):
                status = 503
            else:
                status = 200
            record = {
                "path": self.path,
                "status": status,
                "webhook_id": msg_id,
                "runkey_ok": runkey_ok,
                "standard_ok": std_ok,
                "body": json.loads(body or b"null"),
            }
            with lock, open(args.log, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "/ok")
            if status == 503:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Timer(args.lifetime, server.shutdown).start()
    server.serve_forever()


if __name__ == "__main__":
    main()

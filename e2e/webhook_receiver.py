#!/usr/bin/env python3
"""A webhook receiver for the end-to-end tests, independent of runplane's code.

Listens on 127.0.0.1, verifies both signatures with Python's own hmac against
every --secret (a request passes when any secret verifies it), and appends one
JSON line per request to --log as soon as the request is read. Behaviour by
path (the query string is ignored unless said):
  /ok               200
  /gone             410
  /redirect         302 to /ok
  /flaky            503 with Retry-After: 1 while the file --fail-flag exists, then 200
  /slow?seconds=N   holds the request N seconds (default 3), then 200
  /later?seconds=N  the first request of each webhook-id: 503 with Retry-After: N
                    (delay-seconds); later ones 200
  /later-date?seconds=N  the same with Retry-After as an HTTP date N seconds ahead
It stops by itself after --lifetime seconds.
"""
import argparse
import base64
import email.utils
import hashlib
import hmac
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# Standard Webhooks: a signature is refused when its timestamp is further
# than this from the receiver's clock (a replay).
TOLERANCE = 5 * 60


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
    seen = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received = time.time()
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            runkey = self.headers.get("x-runkey-signature", "")
            expected = ["sha256=" + hmac.new(s, body, hashlib.sha256).hexdigest() for s in secrets]
            runkey_ok = any(hmac.compare_digest(e, got) for e in expected for got in runkey.split())
            msg_id = self.headers.get("webhook-id", "")
            ts = self.headers.get("webhook-timestamp", "")
            fresh = ts.isdigit() and abs(received - int(ts)) <= TOLERANCE
            signed = f"{msg_id}.{ts}.".encode() + body
            std_expected = [
                "v1," + base64.b64encode(hmac.new(s, signed, hashlib.sha256).digest()).decode() for s in secrets
            ]
            std_got = self.headers.get("webhook-signature", "").split()
            std_ok = fresh and any(hmac.compare_digest(e, g) for e in std_expected for g in std_got)
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            seconds = float(query.get("seconds", ["3"])[0])
            headers = {}
            hold = 0.0
            with lock:
                first_of_id = (url.path, msg_id) not in seen
                seen.add((url.path, msg_id))
            if url.path == "/gone":
                status = 410
            elif url.path == "/redirect":
                status = 302
                headers["Location"] = "/ok"
            elif url.path == "/flaky" and args.fail_flag and os.path.exists(args.fail_flag):
                status = 503
                headers["Retry-After"] = "1"
            elif url.path == "/slow":
                status = 200
                hold = seconds
            elif url.path == "/later" and first_of_id:
                status = 503
                headers["Retry-After"] = str(int(seconds))
            elif url.path == "/later-date" and first_of_id:
                status = 503
                headers["Retry-After"] = email.utils.formatdate(received + seconds, usegmt=True)
            else:
                status = 200
            record = {
                "path": url.path,
                "status": status,
                "received": received,
                "webhook_id": msg_id,
                "webhook_timestamp": ts,
                "runkey_ok": runkey_ok,
                "standard_ok": std_ok,
                "runkey_signatures": len(runkey.split()),
                "standard_signatures": len(std_got),
                "body": json.loads(body or b"null"),
            }
            with lock, open(args.log, "a") as f:
                f.write(json.dumps(record) + "\n")
            if hold:
                time.sleep(hold)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
            except OSError:
                pass  # the sender went away while the request was held

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    threading.Timer(args.lifetime, server.shutdown).start()
    server.serve_forever()


if __name__ == "__main__":
    main()

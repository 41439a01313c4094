"""A loopback HTTP target for the benchmarks: answers 200 at once and records when each request arrived.

    python bench/target.py PORT      (prints "ready" when listening on 127.0.0.1:PORT)

POST /_arrivals[?clear=1] answers the recorded arrivals as JSON (and forgets them with clear=1).
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

arrivals: list = []
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # headers and body go out at once, with no delayed-ACK stalls

    def _answer(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _handle(self) -> None:
        at = time.time()
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/_arrivals"):
            with lock:
                payload = json.dumps(arrivals).encode()
                if "clear=1" in self.path:
                    arrivals.clear()
            self._answer(payload)
            return
        with lock:
            arrivals.append({"at": at, "path": self.path,
                             "scheduled": self.headers.get("X-Schedserver-Scheduled-At")})
        self._answer(b"{}")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2048


if __name__ == "__main__":
    httpd = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    httpd.serve_forever(poll_interval=0.05)

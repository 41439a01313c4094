"""A loopback HTTP target for the benchmarks: answers 200 at once and records when each request arrived.

    python bench/target.py PORT      (prints "ready" when listening on 127.0.0.1:PORT)

POST /_arrivals[?clear=1] answers the recorded arrivals as JSON (and forgets them with clear=1).

One thread on an epoll loop, so a request's arrival is the moment the loop learnt its socket was readable (one
stamp for each batch of ready sockets). The target used to be http.server's ThreadingHTTPServer: a thread per
connection, each stamping its request only once it got the interpreter lock. With 1,000 kept-alive connections
and 1,000 requests written within a few milliseconds, those stamps trailed the writes by up to 0.8 s: the
target's own lock contention, not the sender's punctuality. Keep-alive HTTP/1.1 with Content-Length bodies is
all the benchmarks send.
"""

import json
import selectors
import socket
import sys
import time

arrivals: list = []


def _answer(conn: socket.socket, method: str, payload: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
    conn.settimeout(10)         # answers are small, and every client reads them; bounded all the same
    try:
        conn.sendall(head + (payload if method != "HEAD" else b""))
    finally:
        conn.setblocking(False)


def _serve(conn: socket.socket, buffer: bytearray, at: float) -> bool:
    """Answer every whole request in `buffer`; False when the connection should close."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return len(buffer) < 1 << 20
        lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return False
        method, path = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        if len(buffer) < end + 4 + length:
            return True                 # the body is still on its way
        del buffer[:end + 4 + length]
        if path.startswith("/_arrivals"):
            payload = json.dumps(arrivals).encode()
            if "clear=1" in path:
                arrivals.clear()
        else:
            arrivals.append({"at": at, "path": path, "scheduled": headers.get("x-schedserver-scheduled-at")})
            payload = b"{}"
        _answer(conn, method, payload)
        if headers.get("connection", "").lower() == "close":
            return False


def main() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(4096)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    print("ready", flush=True)
    while True:
        ready = selector.select()
        at = time.time()                # when the loop learnt of them: one stamp for the whole batch
        for key, _ in ready:
            if key.data is None:
                while True:
                    try:
                        conn, _ = listener.accept()
                    except OSError:     # nothing more to accept, or out of descriptors: try at the next event
                        break
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    selector.register(conn, selectors.EVENT_READ, bytearray())
                continue
            conn, buffer = key.fileobj, key.data
            try:
                chunk = conn.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            keep = False
            if chunk:
                buffer += chunk
                try:
                    keep = _serve(conn, buffer, at)
                except (OSError, ValueError):
                    keep = False
            if not keep:
                selector.unregister(conn)
                conn.close()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass

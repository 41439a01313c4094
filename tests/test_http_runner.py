"""Unit tests of schedserver.HttpRunner against real peers on 127.0.0.1.

Well-behaved targets are http.server in a thread; misbehaving ones (silent, dribbling, endless) are raw sockets.
Grouped by concern: status codes and redirects, peers that cannot be reached, time limits, memory limits,
what is sent, what is ignored (proxies, netrc), what an error may say, that run() never raises, starting and
cancelling runs, pooled connections, and the egress policy (at create and at connect, redirects included).
Every wait has a deadline; nothing leaves this host (the egress tests also listen on one of its own
non-loopback addresses, when it has one).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

import schedserver
from e2e_helpers import TargetServer, wait_until
from peers import PEER_STOP_TIMEOUT, RawPeer, read_request_head


###############################################################################
# Peers ########################################################################
###############################################################################

class RouteServer:
    """http.server on `host`:<free port> answering each path with a fixed (status, headers); 200 otherwise."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str]]], host: str = "127.0.0.1"):
        server = self
        self.hits: list[str] = []
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits.append(self.path)
                status, headers = routes.get(self.path, (200, {}))
                payload = f"answered {status}\n".encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-route-server", daemon=True)

    def __enter__(self) -> "RouteServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=PEER_STOP_TIMEOUT)


def never_answer(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)
    stopping.wait(30)


def dribble_headers_forever(conn: socket.socket, stopping: threading.Event) -> None:
    """The status line and then an endless header, one byte every 0.3 s: headers never end."""
    read_request_head(conn)
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: ":
        if stopping.wait(0.3):
            return
        conn.sendall(bytes([byte]))
    while not stopping.wait(0.3):
        conn.sendall(b"a")


def dribble_body_forever(conn: socket.socket, stopping: threading.Event) -> None:
    """Headers at once, then a body byte every 0.3 s."""
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000000\r\n\r\n")
    while not stopping.wait(0.3):
        conn.sendall(b"x")


def answer_garbage(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)
    conn.sendall(b"THIS IS NOT HTTP AT ALL\r\n\r\n")


def hang_up_at_once(conn: socket.socket, stopping: threading.Event) -> None:
    read_request_head(conn)


class EndlessZeros:
    """A peer whose answer is 200 followed by zeros for ever; counts how many bytes it managed to send."""

    def __init__(self):
        self.sent = 0

    def __call__(self, conn: socket.socket, stopping: threading.Event) -> None:
        read_request_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
        conn.settimeout(0.1)
        chunk = bytes(64 * 1024)
        while not stopping.is_set():
            try:
                self.sent += conn.send(chunk)
            except TimeoutError:
                continue        # the client is not reading (yet); try again unless stopping
            except OSError:
                return          # the client closed the connection


def closed_port() -> int:
    """A port that was bound on 127.0.0.1 and released: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spec(url: str, **fields: Any) -> dict:
    return {"url": url, "method": "GET", "headers": {}, "timeout": 5, "follow_redirects": False, **fields}


def timed_run(request: dict, extra_headers: dict[str, str] | None = None) -> tuple[schedserver.RunResult, float]:
    """Run `request` with a fresh runner; the result and the wall time it took."""
    runner = schedserver.HttpRunner()
    t0 = time.monotonic()
    result = runner.run(request, extra_headers or {})
    return result, time.monotonic() - t0


###############################################################################
# Status codes and redirects ###################################################
###############################################################################

class TestStatusCodes:
    def test_a_2xx_answer_is_ok_with_its_status_code(self):
        with RouteServer({"/created": (201, {})}) as target:
            result, _ = timed_run(spec(target.url + "/created"))
        assert (result.status, result.status_code, result.error) == ("ok", 201, None)

    @pytest.mark.parametrize("code", [404, 500])
    def test_a_4xx_or_5xx_answer_is_an_error_naming_the_code(self, code):
        with RouteServer({"/x": (code, {})}) as target:
            result, _ = timed_run(spec(target.url + "/x"))
        assert (result.status, result.status_code) == ("error", code)
        assert str(code) in result.error

    def test_the_result_carries_when_it_started_and_how_long_it_took(self):
        runner = schedserver.HttpRunner(clock=lambda: 1_700_000_000.0)
        with RouteServer({}) as target:
            result = runner.run(spec(target.url + "/"), {})
        assert result.started_at == 1_700_000_000.0
        assert 0 <= result.duration_ms < 5000


class TestRedirects:
    ROUTES = {"/moved": (302, {"Location": "/final"}), "/final": (200, {}), "/loop": (302, {"Location": "/loop"})}

    def test_a_302_is_ok_as_it_is_when_redirects_are_not_followed(self):
        with RouteServer(self.ROUTES) as target:
            result, _ = timed_run(spec(target.url + "/moved"))
        assert (result.status, result.status_code) == ("ok", 302)
        assert target.hits == ["/moved"]

    def test_with_follow_redirects_it_ends_at_the_final_200(self):
        with RouteServer(self.ROUTES) as target:
            result, _ = timed_run(spec(target.url + "/moved", follow_redirects=True))
        assert (result.status, result.status_code) == ("ok", 200)
        assert target.hits == ["/moved", "/final"]

    def test_a_redirect_loop_is_an_error_result_within_bounded_time(self):
        with RouteServer(self.ROUTES) as target:
            result, elapsed = timed_run(spec(target.url + "/loop", follow_redirects=True))
        assert result.status == "error"
        assert "redirect" in result.error.lower()
        assert elapsed < 5.0
        assert len(target.hits) <= schedserver.MAX_REDIRECTS + 1


###############################################################################
# Peers that cannot be reached #################################################
###############################################################################

class TestUnreachable:
    def test_a_refused_connection_is_an_error_saying_so(self):
        result, elapsed = timed_run(spec(f"http://127.0.0.1:{closed_port()}/hook"))
        assert result.status == "error"
        assert result.status_code is None
        assert "refused" in result.error.lower()
        assert elapsed < 5.0

    def test_a_host_that_cannot_be_resolved_is_an_error(self):
        result, _ = timed_run(spec("http://no-such-host.invalid/hook"))
        assert result.status == "error"
        assert result.status_code is None
        assert result.error


###############################################################################
# Time limits ##################################################################
###############################################################################

class TestTimeLimits:
    def test_a_peer_that_never_answers_times_out_after_the_timeout(self):
        with RawPeer(never_answer) as peer:
            result, elapsed = timed_run(spec(peer.url, timeout=1))
        assert result.status == "timeout"
        assert "1 s" in result.error
        assert elapsed < 1.5

    def test_headers_dribbled_a_byte_at_a_time_cannot_hold_a_run_past_its_deadline(self):
        with RawPeer(dribble_headers_forever) as peer:
            result, elapsed = timed_run(spec(peer.url, timeout=2))
        assert result.status == "timeout"
        assert elapsed < 2.5

    def test_a_body_dribbled_a_byte_at_a_time_cannot_hold_a_run_past_its_deadline(self):
        with RawPeer(dribble_body_forever) as peer:
            result, elapsed = timed_run(spec(peer.url, timeout=2))
        assert result.status == "timeout"
        assert result.status_code == 200
        assert elapsed < 2.5


###############################################################################
# Memory limits ################################################################
###############################################################################

class TestResponseSize:
    def test_an_endless_body_is_read_only_up_to_the_limit_and_the_run_is_ok(self):
        zeros = EndlessZeros()
        with RawPeer(zeros) as peer:
            result, elapsed = timed_run(spec(peer.url, timeout=10))
            client_went_away = peer.finished.wait(PEER_STOP_TIMEOUT)
        assert schedserver.MAX_RESPONSE_BYTES == 64 * 1024
        assert (result.status, result.status_code) == ("ok", 200)
        assert elapsed < 3.0
        assert client_went_away, "the runner kept the connection open after its run ended"
        assert zeros.sent < 8 * 1024 * 1024     # 64 KiB read, plus what socket buffers swallowed


###############################################################################
# What is sent #################################################################
###############################################################################

@pytest.fixture
def target():
    with TargetServer() as server:
        yield server


class TestWhatIsSent:
    def test_method_custom_header_extra_headers_and_a_string_body_reach_the_target_exactly(self, target):
        request = spec(target.url + "/hooks/nightly", method="PUT", headers={"X-Custom": "custom value"},
                       body="plain body, ünïcode too")
        extra = {"X-Schedserver-Schedule-Id": "6f1c1b1e-0000-4000-8000-000000000001",
                 "X-Schedserver-Scheduled-At": "2025-01-15T10:30:00Z"}
        result, _ = timed_run(request, extra)
        assert result.status == "ok", result
        [arrival] = target.wait_for(1, timeout=5)
        assert (arrival.method, arrival.path) == ("PUT", "/hooks/nightly")
        assert arrival.headers["X-Custom"] == "custom value"
        assert arrival.headers["X-Schedserver-Schedule-Id"] == "6f1c1b1e-0000-4000-8000-000000000001"
        assert arrival.headers["X-Schedserver-Scheduled-At"] == "2025-01-15T10:30:00Z"
        assert arrival.body == "plain body, ünïcode too".encode("utf-8")

    def test_a_json_body_arrives_as_json_with_its_content_type(self, target):
        payload = {"report": "daily", "ids": [1, 2, 3], "note": "ünïcode", "nested": {"ok": True, "none": None}}
        result, _ = timed_run(spec(target.url + "/ingest", method="POST", json=payload))
        assert result.status == "ok", result
        [arrival] = target.wait_for(1, timeout=5)
        assert arrival.method == "POST"
        assert arrival.headers["Content-Type"] == "application/json"
        assert json.loads(arrival.body) == payload

    def test_a_custom_content_type_is_kept(self, target):
        result, _ = timed_run(spec(target.url + "/", method="POST", body="a=1",
                                   headers={"Content-Type": "application/x-www-form-urlencoded"}))
        assert result.status == "ok", result
        [arrival] = target.wait_for(1, timeout=5)
        assert arrival.headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert arrival.body == b"a=1"


###############################################################################
# What is ignored ##############################################################
###############################################################################

class TestProxiesAndNetrcAreIgnored:
    def test_proxy_variables_and_netrc_credentials_do_not_touch_the_request(self, target, tmp_path, monkeypatch):
        dead_proxy = f"http://127.0.0.1:{closed_port()}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, dead_proxy)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-password\n")
        netrc.chmod(0o600)
        monkeypatch.setenv("NETRC", str(netrc))

        result, _ = timed_run(spec(target.url + "/direct"))

        assert (result.status, result.status_code) == ("ok", 200), result
        [arrival] = target.wait_for(1, timeout=5)
        assert arrival.path == "/direct"
        assert "Authorization" not in arrival.headers
        assert "Proxy-Authorization" not in arrival.headers


###############################################################################
# What an error may say ########################################################
###############################################################################

class TestErrorsKeepQueryStringsOut:
    @pytest.mark.parametrize("url", [
        "http://127.0.0.1:{refused}/hook?api_key=SECRET-Q",
        "http://no-such-host.invalid/hook?api_key=SECRET-Q",
        "http://127.0.0.1:99999/hook?api_key=SECRET-Q",
    ], ids=["refused", "unresolvable", "invalid-port"])
    def test_an_error_never_contains_the_url_query_string(self, url):
        result, _ = timed_run(spec(url.format(refused=closed_port())))
        assert result.status == "error"
        assert result.error
        assert "SECRET-Q" not in result.error
        assert "api_key" not in result.error


###############################################################################
# run() never raises ###########################################################
###############################################################################

class TestRunNeverRaises:
    def test_a_method_the_server_does_not_implement_is_an_error_result(self, target):
        result, _ = timed_run(spec(target.url + "/", method="BREW"))
        assert (result.status, result.status_code) == ("error", 501)

    def test_a_method_with_a_control_character_is_an_error_result(self, target):
        result, _ = timed_run(spec(target.url + "/", method="GET\r\nX-Injected: 1"))
        assert result.status == "error"
        assert target.received() == []

    def test_a_url_with_an_impossible_port_is_an_error_result(self):
        result, _ = timed_run(spec("http://127.0.0.1:99999/"))
        assert result.status == "error"
        assert result.error

    def test_a_peer_that_answers_garbage_is_an_error_result(self):
        with RawPeer(answer_garbage) as peer:
            result, _ = timed_run(spec(peer.url))
        assert result.status == "error"
        assert result.error

    def test_a_peer_that_hangs_up_without_answering_is_an_error_result(self):
        with RawPeer(hang_up_at_once) as peer:
            result, _ = timed_run(spec(peer.url))
        assert result.status == "error"
        assert result.error

    def test_a_spec_without_a_url_is_an_error_result(self):
        result, _ = timed_run({"method": "GET", "timeout": 5})
        assert result.status == "error"

    def test_a_timeout_that_is_not_a_number_is_an_error_result(self, target):
        # Stored specs are validated, but the runner promises a result for any spec.
        result, _ = timed_run(spec(target.url + "/", timeout="soon"))
        assert result.status == "error"

    def test_the_runner_is_reusable_after_a_cut_connection(self):
        runner = schedserver.HttpRunner()
        with RawPeer(never_answer) as peer:
            first = runner.run(spec(peer.url, timeout=1), {})
        with RouteServer({}) as target:
            second = runner.run(spec(target.url + "/"), {})
        assert (first.status, second.status, second.status_code) == ("timeout", "ok", 200)


    def test_a_url_urllib3_cannot_take_apart_is_an_error_result(self):
        for url in ("http://a%zz/", "http://[v1.fe]/"):     # urlsplit takes them, urllib3 does not
            result, _ = timed_run(spec(url))
            assert result.status == "error", url
            assert result.error


###############################################################################
# What goes on the wire ########################################################
###############################################################################

def record_and_answer_204(heads: list) -> Callable[[socket.socket, threading.Event], None]:
    """A peer behaviour that appends (request line, header lines, body) of each request to `heads`, answers 204."""
    def behave(conn: socket.socket, stopping: threading.Event) -> None:
        conn.settimeout(0.05)
        while not stopping.is_set():
            head = b""
            while b"\r\n\r\n" not in head and not stopping.is_set():
                try:
                    chunk = conn.recv(4096)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                head += chunk
            if not head:
                return
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            body = head.split(b"\r\n\r\n", 1)[1]
            while len(body) < length:
                body += conn.recv(4096)
            lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            heads.append((lines[0], lines[1:], body))
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    return behave


class TestTheRequestOnTheWire:
    @pytest.mark.parametrize("request_fields, body", [
        ({"method": "GET"}, b""),
        ({"method": "HEAD"}, b""),
        ({"method": "POST"}, b""),
        ({"method": "PUT", "body": "plain ünïcode", "headers": {"X-A": "1", "Content-Type": "text/plain"}},
         "plain ünïcode".encode()),
        ({"method": "PATCH", "json": {"k": [1, 2]}}, b'{"k": [1, 2]}'),
        ({"method": "DELETE", "headers": {"Host": "example.test", "Accept-Encoding": "gzip"}}, b""),
    ], ids=["GET", "HEAD", "POST-empty", "PUT-body", "PATCH-json", "DELETE-own-host"])
    def test_each_method_sends_its_request_line_headers_and_body_exactly(self, request_fields, body):
        heads: list[tuple] = []
        with RawPeer(record_and_answer_204(heads)) as peer:
            request = spec(peer.url + "path/x?q=1", **request_fields)
            result = schedserver.HttpRunner().run(request, {"X-Schedserver-Schedule-Id": "abc"})
        assert (result.status, result.status_code) == ("ok", 204), result
        [(request_line, header_lines, sent_body)] = heads
        method = request_fields["method"].encode()
        assert request_line == method + b" /path/x?q=1 HTTP/1.1"
        headers = {}
        for line in header_lines:
            name, _, value = line.decode("latin-1").partition(":")
            assert name.lower() not in headers, f"header {name} sent twice: {header_lines}"
            headers[name.lower()] = value.strip()
        assert headers["x-schedserver-schedule-id"] == "abc"
        assert headers["user-agent"].startswith("schedserver/")
        for name, value in request_fields.get("headers", {}).items():
            assert headers[name.lower()] == value
        if "Host" not in request_fields.get("headers", {}):
            assert headers["host"] == f"127.0.0.1:{peer.port}"
        if "json" in request_fields:
            assert headers["content-type"] == "application/json"
        assert sent_body == body
        if body:
            assert int(headers["content-length"]) == len(body)


###############################################################################
# Starting and cancelling runs #################################################
###############################################################################

def http_run(request: dict, ref: str = "6f1c1b1e-0000-4000-8000-000000000001",
             slot: float = 1_736_942_400.0) -> schedserver.Run:
    """A Run of an HTTP job as the recorder begins it (slot 2025-01-15T12:00:00Z by default)."""
    job = schedserver.Job(key=f"http:{ref}", kind="http", ref=ref, cron=schedserver.parse_cron("0 0 12 * * *"),
                          tz=schedserver.load_timezone("UTC"),
                          target=schedserver.HttpTarget(schedserver.validate_request(request)))
    return schedserver.Run(str(uuid.uuid4()), job, slot, "cron", 1, slot)


def head_read(event: threading.Event) -> Callable[[socket.socket, threading.Event], None]:
    """A peer behaviour that reads the request, says so through `event`, and never answers."""
    def behave(conn: socket.socket, stopping: threading.Event) -> None:
        read_request_head(conn)
        event.set()
        stopping.wait(30)
    return behave


class TestStartAndCancel:
    def test_start_sends_the_schedule_id_and_its_slot_and_hands_the_result_to_on_end(self, target):
        run = http_run({"url": target.url + "/hook", "method": "POST", "json": {"n": 1}})
        ended: list[schedserver.RunResult] = []
        schedserver.HttpRunner().start(run, ended.append)       # runs to its end in the caller's thread
        [result] = ended
        assert (result.status, result.status_code) == ("ok", 200), result
        [arrival] = target.wait_for(1, timeout=5)
        assert (arrival.method, arrival.path, json.loads(arrival.body)) == ("POST", "/hook", {"n": 1})
        assert arrival.headers["X-Schedserver-Schedule-Id"] == "6f1c1b1e-0000-4000-8000-000000000001"
        assert arrival.headers["X-Schedserver-Scheduled-At"] == "2025-01-15T12:00:00Z"

    def test_cancel_cuts_a_run_in_flight_and_it_ends_as_an_error_long_before_its_timeout(self):
        asked = threading.Event()
        runner = schedserver.HttpRunner()
        ended: list[schedserver.RunResult] = []
        with RawPeer(head_read(asked)) as peer:
            run = http_run({"url": peer.url, "timeout": 60})
            worker = threading.Thread(target=runner.start, args=(run, ended.append), daemon=True)
            worker.start()
            assert asked.wait(5), "the run never reached the peer"
            runner.cancel(run)
            worker.join(timeout=10)
            assert not worker.is_alive(), "cancel() did not stop the run"
        [result] = ended
        assert result.status == "error" and result.error

    def test_cancelling_a_run_that_is_not_in_flight_does_nothing(self):
        runner = schedserver.HttpRunner()
        runner.cancel(http_run({"url": "http://127.0.0.1:9/"}))
        with RouteServer({}) as target:
            result = runner.run(spec(target.url + "/"), {})
        assert (result.status, result.status_code) == ("ok", 200)


###############################################################################
# Pooled connections ###########################################################
###############################################################################

def answer_once_then_hang_up(conn: socket.socket, stopping: threading.Event) -> None:
    """Answers one request as if the connection could be kept, then closes it."""
    read_request_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")


class TestPooledConnections:
    def test_runs_to_the_same_target_one_after_another_all_arrive(self):
        with TargetServer(keep_alive=True) as target:
            runner = schedserver.HttpRunner()
            results = [runner.run(spec(target.url + f"/n{n}"), {}) for n in range(3)]
            arrivals = target.wait_for(3, timeout=5)
        assert [(r.status, r.status_code) for r in results] == [("ok", 200)] * 3
        assert [a.path for a in arrivals] == ["/n0", "/n1", "/n2"]

    def test_a_connection_the_target_closed_after_its_answer_is_never_used_for_the_next_run(self):
        runner = schedserver.HttpRunner()
        with RawPeer(answer_once_then_hang_up) as peer:
            first = runner.run(spec(peer.url), {})
            assert wait_until(peer.finished.is_set, 5.0)        # the peer has hung up
            second = runner.run(spec(peer.url), {})
        assert [(r.status, r.status_code) for r in (first, second)] == [("ok", 200), ("ok", 200)]


###############################################################################
# The egress policy ############################################################
###############################################################################

DENY = ("169.254.0.0/16", "10.0.0.0/8", "127.0.0.0/8", "::1/128")
# Every spelling of "this host, any address" a URL can carry: each reaches the loopback listener when allowed.
UNSPECIFIED_HOSTS = ["0.0.0.0", "0", "[::]", "[::ffff:0.0.0.0]", "[::ffff:0:0]"]


class LoopbackListener:
    """Listens on 127.0.0.1:P and [::1]:P (one port P for both) and counts the connections it accepts."""

    def __init__(self):
        for _ in range(50):
            v4 = socket.create_server(("127.0.0.1", 0))
            self.port = v4.getsockname()[1]
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                v6.bind(("::1", self.port))
            except OSError:         # P is taken on ::1: try another
                v6.close()
                v4.close()
                continue
            v6.listen()
            self._sockets = [v4, v6]
            break
        else:
            raise AssertionError("no port free on both 127.0.0.1 and ::1")
        self.accepted: list[tuple] = []
        self._threads = [threading.Thread(target=self._accept, args=(s,), daemon=True) for s in self._sockets]

    def _accept(self, sock: socket.socket) -> None:
        sock.settimeout(0.05)
        while True:
            try:
                conn, address = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(address)
            conn.close()

    def __enter__(self) -> "LoopbackListener":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for sock in self._sockets:
            sock.close()
        for thread in self._threads:
            thread.join(timeout=PEER_STOP_TIMEOUT)


def local_address_outside(deny: tuple[str, ...]) -> str | None:
    """One of this host's own non-loopback IPv4 addresses the policy allows (None if it has none): an
    "allowed host" that is still this machine. Found by routing a UDP socket (nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    policy = schedserver.EgressPolicy(deny=deny)
    return address if address != "0.0.0.0" and policy.permits(address) else None


class TestEgressPolicy:
    @pytest.mark.parametrize("host", UNSPECIFIED_HOSTS)
    def test_an_unspecified_address_is_refused_at_create_as_loopback(self, host):
        policy = schedserver.EgressPolicy(deny=DENY)
        with pytest.raises(schedserver.InvalidParameter) as caught:
            schedserver.validate_create({"cron": "0 * * * *", "request": {"url": f"http://{host}:8080/"}}, "UTC",
                                        policy)
        assert "egress policy" in caught.value.message

    @pytest.mark.parametrize("host", UNSPECIFIED_HOSTS)
    def test_an_unspecified_address_never_reaches_a_loopback_listener_and_the_error_names_the_policy(self, host):
        with LoopbackListener() as listener:
            url = f"http://{host}:{listener.port}/"
            # Without a policy the URL does reach the listener: the refusal below is the policy's doing.
            unpoliced = schedserver.HttpRunner().run(spec(url, timeout=3), {})
            assert wait_until(lambda: len(listener.accepted) == 1, 5.0), (unpoliced, listener.accepted)

            result = schedserver.HttpRunner(schedserver.EgressPolicy(deny=DENY)).run(spec(url, timeout=3), {})

            assert listener.accepted == [listener.accepted[0]], "the policed run reached the listener"
        assert result.status == "error", result
        assert "egress policy" in result.error

    @pytest.mark.parametrize("host", UNSPECIFIED_HOSTS)
    def test_a_redirect_from_an_allowed_host_to_an_unspecified_address_is_refused(self, host):
        allowed = local_address_outside(DENY)
        if allowed is None:
            pytest.skip("this host has no non-loopback address outside the deny list to redirect from")
        with LoopbackListener() as listener:
            routes = {"/hop": (302, {"Location": f"http://{host}:{listener.port}/"})}
            with RouteServer(routes, host=allowed) as redirector:
                policy = schedserver.EgressPolicy(deny=DENY)
                result = schedserver.HttpRunner(policy).run(spec(redirector.url + "/hop", follow_redirects=True,
                                                                 timeout=3), {})
                assert redirector.hits == ["/hop"]          # the allowed host was reached
            assert listener.accepted == []
        assert result.status == "error", result
        assert "egress policy" in result.error

    def test_a_denied_loopback_target_receives_nothing(self, target):
        policy = schedserver.EgressPolicy(deny=("127.0.0.0/8",))
        result = schedserver.HttpRunner(policy).run(spec(target.url + "/x"), {})
        assert result.status == "error" and "egress policy" in result.error, result
        assert target.received() == []

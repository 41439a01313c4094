"""Unit tests of schedserver.HttpRunner against real peers on 127.0.0.1.

Well-behaved targets are http.server in a thread; misbehaving ones (silent, dribbling, endless) are raw sockets.
Grouped by concern: status codes and redirects, peers that cannot be reached, time limits, memory limits,
what is sent, what is ignored (proxies, netrc), what an error may say, and that run() never raises.
Every wait has a deadline; nothing leaves the loopback interface.
"""

from __future__ import annotations

import json
import socket
import threading
import time
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
    """http.server on 127.0.0.1:<free port> answering each path with a fixed (status, headers); 200 otherwise."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str]]]):
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

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
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


###############################################################################
# Runs the ticker starts on kept connections ###################################
###############################################################################

def kept_runner(url: str, count: int = 1, **kwargs: Any) -> tuple[schedserver.HttpRunner, tuple]:
    """A runner holding `count` open connections to `url`'s origin, as prepare_upcoming gets them ready."""
    runner = schedserver.HttpRunner(**kwargs)
    origin = runner.origin(spec(url))
    assert runner.to_open(origin, count) == count
    for _ in range(count):
        runner.open_kept(origin, url)
    return runner, origin


class TestStartedByTheTicker:
    def test_with_no_kept_connection_there_is_nothing_to_start_on(self):
        assert schedserver.HttpRunner().checkout(spec("http://127.0.0.1:9/x")) is None

    def test_a_run_started_on_a_kept_connection_sends_everything_and_reads_its_answer(self):
        with TargetServer(keep_alive=True) as target:
            runner, origin = kept_runner(target.url + "/hooks/nightly")
            assert runner.kept(origin) == 1
            request = spec(target.url + "/hooks/nightly?x=1", method="POST", json={"n": 1},
                           headers={"X-Custom": "v"})
            conn = runner.checkout(request)
            assert conn is not None and runner.kept(origin) == 0
            pending = runner.send(conn, request, {"X-Schedserver-Schedule-Id": "abc"})
            result = runner.finish(pending)
            assert (result.status, result.status_code, result.error) == ("ok", 200, None)
            (arrival,) = target.wait_for(1, 5.0)
        assert (arrival.method, arrival.path, arrival.body) == ("POST", "/hooks/nightly?x=1", b'{"n": 1}')
        assert arrival.headers["X-Custom"] == "v" and arrival.headers["X-Schedserver-Schedule-Id"] == "abc"
        assert arrival.headers["Content-Type"] == "application/json"
        assert runner.kept(origin) == 1         # read to its end on a keep-alive connection: kept again

    def test_a_connection_the_answer_closes_is_not_kept(self):
        with TargetServer() as target:          # HTTP/1.0: one request per connection
            runner, origin = kept_runner(target.url + "/x")
            result = runner.finish(runner.send(runner.checkout(spec(target.url + "/x")), spec(target.url + "/x"), {}))
        assert (result.status, result.status_code) == ("ok", 200)
        assert runner.kept(origin) == 0

    def test_a_kept_connection_the_other_end_closed_is_never_used(self):
        peer = RawPeer(lambda conn, stopping: None)         # accepts, then hangs up
        with peer:
            runner, origin = kept_runner(peer.url)
            assert wait_until(peer.finished.is_set, 5.0)
            assert wait_until(lambda: runner.checkout(spec(peer.url)) is None, 5.0)
        assert runner.kept(origin) == 0

    def test_runs_the_ticker_cannot_begin_safely_are_left_whole_to_a_worker(self):
        runner = schedserver.HttpRunner()
        assert runner.origin(spec("http://127.0.0.1:9/x")) == ("http", "127.0.0.1", 9)
        assert runner.origin(spec("http://127.0.0.1:9/x", follow_redirects=True)) is None
        assert runner.origin(spec("http://127.0.0.1:9/x", body="x" * 20_000)) is None
        assert runner.origin(spec("http://127.0.0.1:9/x", body="é" * 9_000)) is None        # 18,000 bytes
        assert runner.origin(spec("http://127.0.0.1:9/x", json={"x": "y" * 20_000})) is None
        assert runner.origin(spec("http://127.0.0.1:9/x", headers={"X-Big": "h" * 20_000})) is None
        assert runner.origin(spec("http://127.0.0.1:9/x", headers={"Transfer-Encoding": "chunked"})) is None
        assert runner.origin(spec("https://127.0.0.1:9/x")) is None
        for url in ("http://a%zz/", "http://[v1.fe]/"):     # urlsplit takes them, urllib3 does not
            assert runner.origin(spec(url)) is None
            assert runner.run(spec(url), {}).status == "error"

    def test_the_time_limit_of_a_begun_run_counts_from_when_a_worker_reads_its_answer(self):
        with TargetServer(keep_alive=True) as target:
            runner, origin = kept_runner(target.url + "/x")
            request = spec(target.url + "/x", timeout=0.5)
            pending = runner.send(runner.checkout(request), request, {})
            time.sleep(0.8)                 # every worker busy for longer than the run's time limit
            result = runner.finish(pending)
        assert (result.status, result.status_code) == ("ok", 200)
        assert runner.kept(origin) == 1

    def test_a_started_run_without_an_answer_times_out_at_its_deadline_and_its_connection_is_dropped(self):
        with RawPeer(never_answer) as peer:
            runner, origin = kept_runner(peer.url)
            request = spec(peer.url, timeout=1)
            t0 = time.monotonic()
            result = runner.finish(runner.send(runner.checkout(request), request, {}))
            took = time.monotonic() - t0
        assert result.status == "timeout" and 0.9 <= took < 5.0
        assert runner.kept(origin) == 0

    def test_connections_being_opened_count_and_the_budget_caps_them(self):
        runner = schedserver.HttpRunner()
        origin = ("http", "127.0.0.1", 9)
        assert runner.to_open(origin, 5) == 5
        assert runner.to_open(origin, 5) == 0       # five are on their way
        assert runner.to_open(origin, 7) == 2
        runner.kept_budget = 3
        assert runner.to_open(("http", "127.0.0.1", 10), 5) == 3

    def test_a_connection_that_cannot_be_opened_is_not_kept_and_not_tried_again_for_a_while(self, monkeypatch):
        runner, origin = kept_runner(f"http://127.0.0.1:{closed_port()}/x")
        assert runner.kept(origin) == 0
        assert runner.to_open(origin, 1) == 0           # the runs connect themselves for KEPT_RETRY_SECONDS
        monkeypatch.setattr(schedserver, "KEPT_RETRY_SECONDS", 0.0)
        assert runner.to_open(origin, 1) == 1           # no longer counted as opening, either

    def test_the_egress_policy_applies_to_kept_connections(self):
        with TargetServer(keep_alive=True) as target:
            policy = schedserver.EgressPolicy(deny=("127.0.0.0/8",))
            runner, origin = kept_runner(target.url + "/x", policy=policy)
            assert runner.kept(origin) == 0 and target.received() == []

    def test_prune_closes_connections_left_unused(self):
        with TargetServer(keep_alive=True) as target:
            runner, origin = kept_runner(target.url + "/x", count=2)
            runner.prune(idle_for=60)
            assert runner.kept(origin) == 2
            runner.prune(idle_for=0)
            assert runner.kept(origin) == 0

    @pytest.mark.parametrize("request_fields", [
        {"method": "GET"},
        {"method": "HEAD"},
        {"method": "POST"},                                         # no body: Content-Length: 0
        {"method": "PUT", "body": "plain ünïcode", "headers": {"X-A": "1", "Content-Type": "text/plain"}},
        {"method": "PATCH", "json": {"k": [1, 2]}},
        {"method": "DELETE", "headers": {"Host": "example.test", "Accept-Encoding": "gzip"}},
    ])
    def test_the_ticker_writes_the_very_request_a_worker_would(self, request_fields):
        heads: list[tuple] = []

        def record_and_answer(conn: socket.socket, stopping: threading.Event) -> None:
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
                heads.append((lines[0], sorted(lines[1:]), body))
                conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")

        with RawPeer(record_and_answer) as peer:
            request = spec(peer.url + "path/x?q=1", **request_fields)
            extra = {"X-Schedserver-Schedule-Id": "abc"}
            by_worker = schedserver.HttpRunner().run(request, extra)
            runner, _ = kept_runner(peer.url)
            by_ticker = runner.finish(runner.send(runner.checkout(request), request, extra))
        assert (by_worker.status, by_worker.status_code) == (by_ticker.status, by_ticker.status_code) == ("ok", 204)
        by_worker_sent, by_ticker_sent = heads          # (request line, header lines sorted, body)
        assert by_ticker_sent == by_worker_sent

    @pytest.mark.parametrize("behave", [answer_garbage, hang_up_at_once])
    def test_a_started_run_whose_peer_misbehaves_is_an_error_like_a_workers_run(self, behave):
        with RawPeer(behave) as peer:
            by_worker = schedserver.HttpRunner().run(spec(peer.url), {})
            runner, origin = kept_runner(peer.url)
            by_ticker = runner.finish(runner.send(runner.checkout(spec(peer.url)), spec(peer.url), {}))
        assert by_ticker.status == by_worker.status == "error"
        assert runner.kept(origin) == 0

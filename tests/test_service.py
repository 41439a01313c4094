"""Running schedserver as a service: systemd notifications, signals and graceful shutdown, runs cut short by a
crash, what a stop saves for the next start, /healthz, the access log, and the run markers.

Grouped by concern: what systemd is told (a test-owned NOTIFY_SOCKET and sd_notify itself), shutting down on
a signal (scripts and HTTP runs in flight, the grace, a second SIGINT, a signal while starting), recovering runs
a SIGKILL cut short, what a clean stop leaves for the next start, health (the real server, then the harness with
a fake monotonic clock), the ticker's hook, the access log, and the run markers with the recorder that writes
them (the harness's Stack: the real server over a tmp dir, fake clock, no threads). The end-to-end tests start
their own real server on 127.0.0.1; every wait has a deadline, and every `sleep` a script starts carries MARK
so that it can be found in /proc and cleaned up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest
import requests

import schedserver
from e2e_helpers import (CURL_PATH, DEFAULT_TOKEN, REPO_ROOT, ServerProcess, TargetServer, schedserver_argv,
                         schedserver_env, wait_until)
from fakes import FakeClock
from harness import ADMIN, ScriptedHttpRunner, Stack

EXEC = "/api/v1/exec/schedules"
EVERY_SECOND = "* * * * * *"
NEVER = "0 0 1 1 *"                 # a schedule that does not fire while the tests run (unless on New Year)
MARK = uuid.uuid4().int % 10**9     # in the argv of every `sleep` these tests start, e.g. `sleep 30.<MARK>`
NOW = 1_736_937_000.0               # 2025-01-15T10:30:00Z, for the fake wall clock
HEALTH_KEYS = {"status", "version", "uptime_s", "last_tick_age_ms", "schedules", "running"}
INTERRUPTED_AT_START = "interrupted: the server stopped before the run ended"
REPLAYED = re.compile(r"loaded \((\d+) run records replayed\)")


###############################################################################
# Helpers #####################################################################
###############################################################################

def write_script(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.lstrip("\n"))
    return path


def processes_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry))
    return found


def kill_processes_with(marker: str) -> None:
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_until(lambda: not processes_with(marker), 3.0)


@pytest.fixture(autouse=True)
def no_leftover_sleeps():
    """Whatever a test's scripts left running (a SIGKILLed server leaves its scripts behind) dies after it."""
    yield
    kill_processes_with(f".{MARK}")


def read_log(path: Path) -> list[dict]:
    """The records of an NDJSON log, oldest first (nothing if it does not exist yet)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def marker_files(marker_dir: Path) -> dict[str, str]:
    """The run markers in a marker dir (`<run id>.json`), by file name."""
    if not marker_dir.is_dir():
        return {}
    found = {}
    for path in marker_dir.iterdir():
        if path.name.endswith(".json") and not path.name.startswith(schedserver.TEMP_PREFIX):
            try:
                found[path.name] = path.read_text()
            except FileNotFoundError:       # its run ended meanwhile
                continue
    return found


def one_marker(data_dir: Path, timeout: float = 5.0) -> dict:
    """The single run marker in `<data-dir>/running` once it is there."""
    files = wait_until(lambda: marker_files(data_dir / "running"), timeout)
    assert len(files) == 1, files
    return json.loads(next(iter(files.values())))


def markers_left(data_dir: Path) -> list[str]:
    """Every file in `<data-dir>/running` (markers, and anything else: all of it should be gone)."""
    running = data_dir / "running"
    return sorted(p.name for p in running.iterdir()) if running.is_dir() else []


def ms(ts: float) -> str:
    return schedserver.utc_iso(ts, ms=True)


def signal_and_time_exit(server: ServerProcess, sig: int, timeout: float) -> tuple[int | None, float]:
    """Send `sig`, wait for the process to end (at most `timeout` s); its exit status and how long it took."""
    assert server.proc is not None
    started = time.monotonic()
    server.proc.send_signal(sig)
    try:
        server.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    elapsed = time.monotonic() - started
    return server.proc.poll(), elapsed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class NotifySocket:
    """A test-owned $NOTIFY_SOCKET: a datagram socket keeping every message the server sends systemd.

    `on_ready` runs in the reader thread the moment the first READY=1 arrives, before anything else is read,
    so what it sees is the state of the server at that instant.
    """

    def __init__(self, address: str | Path, on_ready: Callable[[], Any] | None = None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(address))
        self.sock.settimeout(0.05)
        self.on_ready = on_ready
        self.ready_probe: Any = None
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="test-notify-socket", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            text = data.decode(errors="replace")
            if self.on_ready is not None and "READY=1" in text.splitlines() and self.ready_probe is None:
                try:
                    self.ready_probe = self.on_ready()
                except Exception as e:      # the probe failing is the finding
                    self.ready_probe = e
            with self._lock:
                self.messages.append(text)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def received(self, since: int = 0) -> list[dict[str, str]]:
        """Messages from index `since` on, each as {KEY: value}."""
        with self._lock:
            found = self.messages[since:]
        return [dict(line.split("=", 1) for line in text.splitlines() if "=" in line) for text in found]

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def wait_for(self, key: str, value: str | None = None, since: int = 0, n: int = 1,
                 timeout: float = 5.0) -> list[dict[str, str]]:
        """Wait until at least `n` messages from `since` on carry `key` (equal to `value` if given); them."""
        def matching() -> list[dict[str, str]]:
            return [m for m in self.received(since) if key in m and (value is None or m[key] == value)]
        wait_until(lambda: len(matching()) >= n, timeout)
        return matching()

    def index_of(self, key: str, value: str, since: int = 0) -> int | None:
        for i, message in enumerate(self.received(since), start=since):
            if message.get(key) == value:
                return i
        return None


@pytest.fixture
def notify_socket(tmp_path):
    sockets: list[NotifySocket] = []

    def make(on_ready: Callable[[], Any] | None = None) -> NotifySocket:
        sockets.append(NotifySocket(tmp_path / "notify.sock", on_ready))
        return sockets[-1]

    yield make
    for s in sockets:
        s.close()


class HoldingTarget:
    """A loopback HTTP target that records each request, then holds it open until released (at most 10 s)."""

    def __init__(self):
        self.arrivals: list[str] = []
        self.release = threading.Event()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                target.arrivals.append(self.path)
                target.release.wait(10)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "3")
                    self.end_headers()
                    self.wfile.write(b"ok\n")
                except OSError:
                    pass        # the server that asked is gone

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-holding-target", daemon=True)

    def __enter__(self) -> "HoldingTarget":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


###############################################################################
# What systemd is told ########################################################
###############################################################################

def test_under_a_notify_socket_the_server_says_ready_once_listening_pings_the_watchdog_and_reports_reload_and_stop(
        tmp_path, notify_socket):
    scripts = tmp_path / "scripts"
    write_script(scripts, "jobs/quiet.sh", f"# @schedule {NEVER}\necho quiet\n")
    port = free_port()
    direct = requests.Session()
    direct.trust_env = False            # no proxy between the probe and 127.0.0.1
    notify = notify_socket(on_ready=lambda: direct.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code)
    server = ServerProcess(tmp_path / "data", scripts, extra_args=("--port", str(port)),
                           env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000",
                                "WATCHDOG_PID": ""})
    with server:
        readies = notify.wait_for("READY", "1", timeout=10)
        assert len(readies) == 1, notify.messages
        ready_at = time.monotonic()
        assert notify.ready_probe == 200, f"GET /healthz the moment READY=1 arrived: {notify.ready_probe!r}"
        assert server.url == f"http://127.0.0.1:{port}"

        # The ticker pings the watchdog once a second, each ping with a STATUS line.
        after_ready = notify.index_of("READY", "1")
        pings = notify.wait_for("WATCHDOG", "1", since=after_ready, n=3, timeout=4.5)
        assert len(pings) >= 3, (time.monotonic() - ready_at, notify.messages)
        assert all("schedules" in ping.get("STATUS", "") for ping in pings), pings
        assert "1 script" in pings[-1]["STATUS"], pings[-1]

        # SIGHUP: RELOADING=1 with the monotonic clock, then READY=1 again.
        before_hup, since = monotonic_usec(), notify.count()
        server.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING", "1", since=since)
        assert reloading, notify.messages[since:]
        assert before_hup <= int(reloading[0]["MONOTONIC_USEC"]) <= monotonic_usec(), reloading[0]
        reloading_at = notify.index_of("RELOADING", "1", since)
        assert notify.wait_for("READY", "1", since=reloading_at + 1), notify.messages[since:]
        assert server.returncode is None

        # SIGTERM: STOPPING=1, then a clean exit.
        since = notify.count()
        status, _ = signal_and_time_exit(server, signal.SIGTERM, timeout=10)
        assert notify.wait_for("STOPPING", "1", since=since, timeout=2), notify.messages[since:]
        assert status == 0, server.stderr_text()
    direct.close()


def test_sd_notify_sends_one_datagram_to_a_socket_path(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert schedserver.sd_notify("READY=1\nSTATUS=testing") is True
        assert receiver.recv(4096) == b"READY=1\nSTATUS=testing"


def test_sd_notify_reaches_an_abstract_namespace_socket_given_as_at_name(monkeypatch):
    name = f"schedserver-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert schedserver.sd_notify("WATCHDOG=1") is True
        assert receiver.recv(4096) == b"WATCHDOG=1"


def test_sd_notify_does_nothing_without_notify_socket_and_never_raises_when_nobody_listens(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert schedserver.sd_notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert schedserver.sd_notify("READY=1") is False


def test_the_watchdog_is_enabled_only_with_watchdog_usec_and_for_this_process(monkeypatch):
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert schedserver.watchdog_enabled() is False
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    assert schedserver.watchdog_enabled() is True
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert schedserver.watchdog_enabled() is True
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert schedserver.watchdog_enabled() is False


def notifying_stack(root: Path, notifications: list[str]) -> Stack:
    """A Stack whose script service tells `notifications` what it would tell systemd, loaded (started) after."""
    write_script(root / "scripts", "jobs/quiet.sh", f"# @schedule {NEVER}\necho quiet\n")
    stack = Stack(root, FakeClock(NOW), load=False)
    stack.scripts.notify = notifications.append
    stack.server.load()
    return stack


def test_a_reload_is_announced_with_reloading_and_monotonic_usec_then_ready_but_not_the_start_or_a_dry_run(tmp_path):
    notifications: list[str] = []
    with notifying_stack(tmp_path, notifications) as stack:
        assert stack.scripts.count() == 1
        stack.scripts.reload(dry_run=True)
        assert notifications == []          # the start's READY=1 comes from the server, once it listens

        before = monotonic_usec()
        stack.scripts.reload(reason="SIGHUP")
        after = monotonic_usec()
    assert len(notifications) == 2, notifications
    first = dict(line.split("=", 1) for line in notifications[0].splitlines())
    assert first.keys() == {"RELOADING", "MONOTONIC_USEC"} and first["RELOADING"] == "1", notifications
    assert before <= int(first["MONOTONIC_USEC"]) <= after
    assert notifications[1] == "READY=1"


def test_a_reload_that_fails_still_says_ready_afterwards(tmp_path):
    notifications: list[str] = []
    with notifying_stack(tmp_path, notifications) as stack:
        def vanished() -> Any:
            raise OSError("scripts dir vanished")
        stack.server.catalog.scan = vanished
        with pytest.raises(OSError):
            stack.scripts.reload()
    assert [n.splitlines()[0] for n in notifications] == ["RELOADING=1", "READY=1"]


###############################################################################
# Shutting down on a signal ###################################################
###############################################################################

def test_sigterm_while_a_script_sleeps_stops_it_within_the_grace_and_records_it_as_interrupted_by_shutdown(tmp_path):
    scripts, data = tmp_path / "scripts", tmp_path / "data"
    write_script(scripts, "jobs/sleeper.sh", f"""
# @schedule {EVERY_SECOND}
sleep 31.{MARK} &
sleep 30.{MARK}
echo never
""")
    server = ServerProcess(data, scripts, env={"SCHEDSERVER_SHUTDOWN_GRACE_SECONDS": "1"}).start()
    try:
        assert wait_until(lambda: len(processes_with(f".{MARK}")) >= 2, 5.0), server.stderr_text()
        marker = one_marker(data)
        status, elapsed = signal_and_time_exit(server, signal.SIGTERM, timeout=6)
    finally:
        server.stop()
    assert status == 0, server.stderr_text()
    assert elapsed <= 1 + 2, f"exited {elapsed:.2f} s after SIGTERM with a 1 s grace"
    assert wait_until(lambda: not processes_with(f".{MARK}"), 1.0) is True, "a process of the script survived"
    assert (marker["kind"], marker["ref"]) == ("script", "jobs/sleeper.sh")

    records = [r for r in read_log(data / "fires.log") if r.get("runId") == marker["run_id"]]
    assert len(records) == 1, records
    assert records[0]["status"] == "interrupted" and records[0]["error"] == "interrupted by shutdown", records[0]
    assert records[0]["ts"] == ms(marker["slot"]) and records[0]["scriptPath"] == "jobs/sleeper.sh"
    assert markers_left(data) == []
    assert "interrupted by shutdown" in server.stderr_text()


def test_a_run_that_ends_within_the_grace_is_recorded_as_it_ended_and_the_server_exits_without_waiting_it_all(
        tmp_path):
    scripts, data = tmp_path / "scripts", tmp_path / "data"
    write_script(scripts, "jobs/short.sh", f"""
# @schedule {EVERY_SECOND}
sleep 1.{MARK}
echo finished within the grace
""")
    server = ServerProcess(data, scripts, env={"SCHEDSERVER_SHUTDOWN_GRACE_SECONDS": "10"}).start()
    try:
        assert wait_until(lambda: processes_with(f"1.{MARK}"), 5.0), server.stderr_text()
        marker = one_marker(data)
        status, elapsed = signal_and_time_exit(server, signal.SIGTERM, timeout=12)
    finally:
        server.stop()
    assert status == 0, server.stderr_text()
    assert elapsed < 5, f"exited {elapsed:.2f} s after SIGTERM; the run needed at most 2 s"

    fires = read_log(data / "fires.log")
    records = [r for r in fires if r.get("runId") == marker["run_id"]]
    assert len(records) == 1, records
    assert records[0]["status"] == "ok", records[0]
    assert records[0]["returnPreview"] == "finished within the grace"
    assert not [r for r in fires if r.get("status") == "interrupted" or "interrupted" in str(r.get("error"))], fires
    assert markers_left(data) == []


def test_sigterm_during_an_http_run_records_it_as_interrupted_by_shutdown_and_exits_0_within_the_grace(tmp_path):
    data = tmp_path / "data"
    with HoldingTarget() as target:
        server = ServerProcess(data, tmp_path / "scripts", env={"SCHEDSERVER_SHUTDOWN_GRACE_SECONDS": "1"}).start()
        try:
            created = server.api("POST", CURL_PATH, json={
                "cron": EVERY_SECOND, "request": {"url": target.url + "/hold", "timeout": 30}})
            assert created.status_code == 201, created.text
            schedule_id = created.json()["id"]
            assert wait_until(lambda: target.arrivals, 5.0), server.stderr_text()
            marker = one_marker(data)
            assert (marker["kind"], marker["ref"]) == ("http", schedule_id)
            status, elapsed = signal_and_time_exit(server, signal.SIGTERM, timeout=6)
        finally:
            server.stop()
    assert status == 0, server.stderr_text()
    assert elapsed <= 1 + 2, f"exited {elapsed:.2f} s after SIGTERM with a 1 s grace"

    records = [r for r in read_log(data / "curl-runs.log") if r.get("run_id") == marker["run_id"]]
    assert len(records) == 1, records
    assert records[0]["schedule_id"] == schedule_id
    assert records[0]["status"] == "interrupted" and records[0]["error"] == "interrupted by shutdown", records[0]
    assert records[0]["scheduled_at"] == ms(marker["slot"])
    assert markers_left(data) == []


def test_an_http_run_that_ends_within_the_grace_is_recorded_as_it_ended(tmp_path):
    data = tmp_path / "data"
    with HoldingTarget() as target:
        server = ServerProcess(data, tmp_path / "scripts", env={"SCHEDSERVER_SHUTDOWN_GRACE_SECONDS": "10"}).start()
        try:
            created = server.api("POST", CURL_PATH, json={
                "cron": EVERY_SECOND, "request": {"url": target.url + "/hold", "timeout": 30}})
            assert created.status_code == 201, created.text
            assert wait_until(lambda: target.arrivals, 5.0), server.stderr_text()
            marker = one_marker(data)
            threading.Timer(0.5, target.release.set).start()       # the target answers 0.5 s into the grace
            status, elapsed = signal_and_time_exit(server, signal.SIGTERM, timeout=12)
        finally:
            server.stop()
    assert status == 0, server.stderr_text()
    assert elapsed < 5, f"exited {elapsed:.2f} s after SIGTERM; the target answered after 0.5 s"

    runs = read_log(data / "curl-runs.log")
    records = [r for r in runs if r.get("run_id") == marker["run_id"]]
    assert len(records) == 1, (runs, server.stderr_text())
    assert (records[0]["status"], records[0]["status_code"]) == ("ok", 200), records[0]
    assert not [r for r in runs if r.get("status") == "interrupted" or "interrupted" in str(r.get("error"))], runs
    assert markers_left(data) == []


def test_a_second_sigint_exits_at_once_while_the_first_waits_for_a_long_run(tmp_path):
    scripts, data = tmp_path / "scripts", tmp_path / "data"
    write_script(scripts, "jobs/long.sh", f"# @schedule {EVERY_SECOND}\nsleep 33.{MARK}\n")
    server = ServerProcess(data, scripts, env={"SCHEDSERVER_SHUTDOWN_GRACE_SECONDS": "30"}).start()
    try:
        assert wait_until(lambda: processes_with(f"33.{MARK}"), 5.0), server.stderr_text()
        server.proc.send_signal(signal.SIGINT)
        assert wait_until(lambda: "stopping (SIGINT)" in server.stderr_text(), 3.0), server.stderr_text()
        time.sleep(0.3)                 # into the wait for the run
        assert server.returncode is None, "the first SIGINT must wait for the run (grace 30 s)"
        status, elapsed = signal_and_time_exit(server, signal.SIGINT, timeout=5)
    finally:
        server.stop()
    assert status is not None and elapsed <= 2.0, f"still running {elapsed:.2f} s after the second SIGINT"


def test_a_stop_signal_while_the_start_runs_syntax_checks_ends_the_start_exits_0_and_leaves_no_check_running(
        tmp_path):
    scripts, data = tmp_path / "scripts", tmp_path / "data"
    write_script(scripts, "slow.chk", "# @schedule 0 0 1 1 *\n")
    config = tmp_path / "schedserver.toml"
    config.write_text('[exec.preflight]\n".chk" = ["/bin/sh", "-c", "sleep 30.%d", "check"]\n'
                      '[exec.interpreters]\n".chk" = ["/bin/sh"]\n' % MARK)
    with open(tmp_path / "stderr.log", "w") as stderr:
        proc = subprocess.Popen(schedserver_argv(data, scripts, 0, "--config", str(config)), cwd=REPO_ROOT,
                                env=schedserver_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr)
    try:
        assert wait_until(lambda: processes_with(f"30.{MARK}"), 10.0), (tmp_path / "stderr.log").read_text()
        proc.send_signal(signal.SIGTERM)            # as systemd stopping the unit while it starts
        try:
            status = proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            status = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    text = (tmp_path / "stderr.log").read_text()
    assert status == 0, f"still starting 8 s after SIGTERM (a syntax check may take 20 s); stderr:\n{text}"
    assert "Traceback" not in text
    assert not processes_with(f"30.{MARK}"), "the syntax check the start began is still running"


def test_a_sighup_while_starting_is_ignored_so_the_starts_own_scan_still_counts_downtime(tmp_path, caplog):
    config = schedserver.load_config({"data_dir": str(tmp_path / "data"), "scripts_dir": str(tmp_path / "scripts"),
                                      "port": 0, "host": "127.0.0.1"}, environ={})
    server = schedserver.Server(config)
    load = server.http.load
    server.http.load = lambda: (server.reload_scripts(), load())      # a SIGHUP during the start
    try:
        with caplog.at_level("INFO", logger="schedserver"):
            server.start()
            server.reload_scripts()                                    # and one after it
            wait_until(lambda: "scripts reloaded (SIGHUP)" in caplog.text, timeout=10)
    finally:
        server.close()

    assert "SIGHUP while starting: ignored" in caplog.text
    assert caplog.text.count("scripts reloaded (SIGHUP)") == 1 and "scripts reloaded (start)" in caplog.text


###############################################################################
# Runs cut short by a crash ###################################################
###############################################################################

def test_a_fire_cut_short_by_sigkill_is_recorded_as_interrupted_at_the_next_start_and_not_run_again(tmp_path):
    scripts, data = tmp_path / "scripts", tmp_path / "data"
    write_script(scripts, "jobs/crashy.sh", f"# @schedule {EVERY_SECOND}\nsleep 32.{MARK}\n")
    first = ServerProcess(data, scripts).start()
    try:
        assert wait_until(lambda: processes_with(f"32.{MARK}"), 5.0), first.stderr_text()
        marker = one_marker(data)
    finally:
        first.kill()
    assert [json.loads(text)["run_id"] for text in marker_files(data / "running").values()] == [marker["run_id"]]
    kill_processes_with(f"32.{MARK}")   # a script runs in its own session: SIGKILL of the server leaves it
    write_script(scripts, "jobs/crashy.sh", f"# @schedule {EVERY_SECOND}\necho after the restart\n")
    slot = ms(marker["slot"])

    with ServerProcess(data, scripts) as second:
        def fires() -> list[dict]:
            return read_log(data / "fires.log")

        def fired_again() -> bool:
            return any(r["status"] == "ok" and r["ts"] > slot for r in fires())

        assert wait_until(fired_again, 5.0), (fires(), second.stderr_text())
        shown = second.api("GET", EXEC + "/history", params={"scriptPath": "jobs/crashy.sh", "limit": 100})
        assert shown.status_code == 200, shown.text
    assert second.returncode == 0, second.stderr_text()

    same_slot = [r for r in fires() if r["ts"] == slot]
    assert len(same_slot) == 1, same_slot
    assert same_slot[0]["runId"] == marker["run_id"], same_slot
    assert same_slot[0]["status"] == "interrupted" and same_slot[0]["error"] == INTERRUPTED_AT_START, same_slot
    assert [e["status"] for e in shown.json()["entries"] if e.get("runId") == marker["run_id"]] == ["interrupted"]
    assert markers_left(data) == []


def test_what_a_script_run_left_running_when_the_server_was_sigkilled_is_stopped_at_the_next_start(tmp_path):
    scripts, data = tmp_path / "scripts", tmp_path / "data"
    write_script(scripts, "jobs/crashy.sh", f"# @schedule {EVERY_SECOND}\nsleep 34.{MARK}\n")
    first = ServerProcess(data, scripts).start()
    try:
        assert wait_until(lambda: processes_with(f"34.{MARK}"), 5.0), first.stderr_text()
        marker = one_marker(data)
    finally:
        first.kill()
    assert processes_with(f"34.{MARK}"), "the script's process outlives the server (its own session)"
    write_script(scripts, "jobs/crashy.sh", f"# @schedule {NEVER}\necho quiet\n")

    with ServerProcess(data, scripts) as second:
        assert wait_until(lambda: not processes_with(f"34.{MARK}"), 5.0), (
            "the next start left the run's process running", second.stderr_text())
    records = [r for r in read_log(data / "fires.log") if r.get("runId") == marker["run_id"]]
    assert [(r["status"], r["error"]) for r in records] == [("interrupted", INTERRUPTED_AT_START)], records
    assert markers_left(data) == []


def test_an_http_run_cut_short_by_sigkill_is_recorded_as_interrupted_at_the_next_start(tmp_path):
    data = tmp_path / "data"
    with HoldingTarget() as target:
        first = ServerProcess(data, tmp_path / "scripts").start()
        try:
            created = first.api("POST", CURL_PATH, json={
                "cron": EVERY_SECOND, "request": {"url": target.url + "/hold", "timeout": 30}})
            assert created.status_code == 201, created.text
            schedule_id = created.json()["id"]
            assert wait_until(lambda: target.arrivals, 5.0), first.stderr_text()
            marker = one_marker(data)
        finally:
            first.kill()
        target.release.set()            # from now on the target answers at once
        with ServerProcess(data, tmp_path / "scripts") as second:
            shown = second.api("GET", f"{CURL_PATH}/{schedule_id}").json()
    runs = [r for r in read_log(data / "curl-runs.log") if r.get("run_id") == marker["run_id"]]
    assert len(runs) == 1, runs
    assert runs[0]["status"] == "interrupted" and runs[0]["error"] == INTERRUPTED_AT_START, runs[0]
    assert runs[0]["scheduled_at"] == ms(marker["slot"])
    assert [(h["run_id"], h["status"], h["error"]) for h in shown["history"] if h["run_id"] == marker["run_id"]] == [
        (marker["run_id"], "interrupted", INTERRUPTED_AT_START)]
    assert markers_left(data) == []


def test_regression_five_quick_toggles_then_a_clean_stop_leave_no_record_of_a_run_that_did_not_run(tmp_path):
    # The old server readied a run (its marker written, on a kept connection) in the tenth of a second before its
    # slot; quick enables and disables around that moment left markers of runs that never ran, and the next start
    # recorded them as interrupted runs. The toggles here straddle a second, against a keep-alive target.
    data = tmp_path / "data"
    with TargetServer(keep_alive=True) as target:
        server = ServerProcess(data, tmp_path / "scripts").start()
        try:
            created = server.api("POST", CURL_PATH, json={"cron": EVERY_SECOND,
                                                          "request": {"url": target.url + "/toggled"}})
            assert created.status_code == 201, created.text
            schedule_id = created.json()["id"]
            assert len(target.wait_for(2, 5.0, path="/toggled")) >= 2, server.stderr_text()
            time.sleep((0.75 - time.time() % 1.0) % 1.0)          # 0.25 s before a whole second
            toggles = []
            for _ in range(5):                                      # 5 toggles in under 0.5 s
                toggles.append(server.api("PATCH", f"{CURL_PATH}/{schedule_id}/toggle"))
                time.sleep(0.08)
            assert [t.status_code for t in toggles] == [200] * 5, [t.text for t in toggles]
            assert [t.json()["enabled"] for t in toggles] == [False, True, False, True, False]
            status = server.stop()
        finally:
            server.stop()
        assert status == 0, server.stderr_text()
        assert markers_left(data) == []

        with ServerProcess(data, tmp_path / "scripts") as restarted:
            shown = restarted.api("GET", f"{CURL_PATH}/{schedule_id}")
            assert shown.status_code == 200, shown.text
            assert markers_left(data) == []
        assert restarted.returncode == 0, restarted.stderr_text()
        arrivals = target.received("/toggled")

    history = shown.json()["history"]
    records = [r for r in read_log(data / "curl-runs.log") if r.get("schedule_id") == schedule_id]
    assert [h for h in history if h["status"] == "interrupted"] == [], history
    assert [r for r in records if r["status"] == "interrupted"] == [], records
    assert {r["status"] for r in records} <= {"ok", "missed", "skipped"}, records
    # Every run it holds reached the target, and every request the target got is a run it holds.
    sent = sorted(a.headers["X-Schedserver-Scheduled-At"] for a in arrivals)
    assert sorted(schedserver.utc_iso(schedserver.parse_iso(r["scheduled_at"]))
                  for r in records if r["status"] == "ok") == sent, (records, sent)
    assert {h["scheduled_at"] for h in history if h["status"] == "ok"} <= set(sent), (history, sent)
    assert shown.json()["enabled"] is False
    assert markers_left(data) == []


###############################################################################
# What a stop leaves for the next start #######################################
###############################################################################

def log_lines(data_dir: Path) -> int:
    """Complete lines in both runs logs (and their backups)."""
    total = 0
    for path in list(data_dir.glob("fires.log*")) + list(data_dir.glob("curl-runs.log*")):
        total += sum(1 for line in path.read_bytes().split(b"\n")[:-1] if line.strip())
    return total


def replayed(server: ServerProcess) -> int:
    """How many runs-log lines the server's start replayed (its one start line says)."""
    found = REPLAYED.findall(server.stderr_text())
    assert len(found) == 1, server.stderr_text()
    return int(found[0])


def test_a_clean_stop_saves_the_run_state_so_the_next_start_replays_nothing_and_after_a_sigkill_only_what_followed(
        tmp_path):
    scripts, data = tmp_path / "scripts", tmp_path / "data"
    write_script(scripts, "jobs/tick.sh", f"# @schedule {EVERY_SECOND}\necho tick\n")
    with TargetServer() as target:
        first = ServerProcess(data, scripts).start()
        try:
            created = first.api("POST", CURL_PATH, json={"cron": EVERY_SECOND,
                                                         "request": {"url": target.url + "/tick"}})
            assert created.status_code == 201, created.text
            assert len(target.wait_for(2, 5.0, path="/tick")) >= 2, first.stderr_text()
            assert wait_until(lambda: len(read_log(data / "fires.log")) >= 2, 5.0), first.stderr_text()
            status = first.stop()
        finally:
            first.stop()
        assert status == 0, first.stderr_text()
        assert (data / "run-state.json").is_file()
        assert markers_left(data) == []
        saved = log_lines(data)

        second = ServerProcess(data, scripts).start()
        try:
            assert replayed(second) == 0, second.stderr_text()
            assert "(0 run records replayed)" in second.stderr_text()
            assert wait_until(lambda: log_lines(data) >= saved + 4, 5.0), second.stderr_text()
        finally:
            second.kill()
        written_since = log_lines(data) - saved

        with ServerProcess(data, scripts) as third:
            assert replayed(third) == written_since, (written_since, third.stderr_text())
        assert third.returncode == 0, third.stderr_text()


###############################################################################
# Health ######################################################################
###############################################################################

def test_healthz_answers_without_a_token_with_exactly_the_documented_fields(tmp_path):
    scripts = tmp_path / "scripts"
    write_script(scripts, "jobs/quiet.sh", f"# @schedule {NEVER}\necho quiet\n")
    with ServerProcess(tmp_path / "data", scripts) as server:
        created = server.api("POST", CURL_PATH, json={"cron": NEVER, "request": {"url": "http://127.0.0.1:9/"}})
        assert created.status_code == 201, created.text
        assert server.api("GET", CURL_PATH, token=None).status_code == 401     # the API itself still needs one
        answer = server.api("GET", "/healthz", token=None)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    body = answer.json()
    assert set(body) == HEALTH_KEYS, body
    assert body["status"] == "ok" and body["version"] == schedserver.__version__
    assert body["schedules"] == {"scripts": 1, "http": 1}
    assert body["running"] == 0
    assert isinstance(body["uptime_s"], (int, float)) and body["uptime_s"] >= 0
    assert isinstance(body["last_tick_age_ms"], int) and 0 <= body["last_tick_age_ms"] < 5000


class HealthHarness:
    """The server as it starts (the harness's Stack, with /healthz) over a scheduler whose clocks are fakes."""

    def __init__(self, root: Path):
        self.stack = Stack(root, FakeClock(NOW), load=False)
        self.wall, self.monotonic = self.stack.clock, FakeClock(5000.0)
        self.stack.scheduler.monotonic = self.monotonic
        self.stack.server.load()

    def healthz(self) -> tuple[int, dict]:
        answer = self.stack.app.get("/healthz", expect_errors=True)
        return answer.status_int, answer.json

    def tick(self) -> None:
        self.stack.tick()

    def pass_seconds(self, seconds: float) -> None:
        """Time passes and the ticker does not tick (blocked)."""
        self.wall.advance(seconds)
        self.monotonic.advance(seconds)


@pytest.fixture
def health(tmp_path):
    harness = HealthHarness(tmp_path)
    yield harness
    harness.stack.close()


def test_healthz_is_ok_right_after_a_tick(health):
    health.pass_seconds(1.5)
    health.tick()
    status, body = health.healthz()
    assert status == 200 and body["status"] == "ok", body
    assert set(body) == HEALTH_KEYS
    assert body["last_tick_age_ms"] == 0 and body["uptime_s"] == 1.5
    assert body["schedules"] == {"scripts": 0, "http": 0} and body["running"] == 0


def test_healthz_counts_the_runs_in_flight(health):
    health.stack.http_runner.hold = True
    health.stack.app.post_json(CURL_PATH, {"cron": EVERY_SECOND, "request": {"url": "http://127.0.0.1:9/"}},
                               headers=ADMIN)
    health.pass_seconds(1)
    health.stack.run_due()
    status, body = health.healthz()
    assert (status, body["running"], body["schedules"]) == (200, 1, {"scripts": 0, "http": 1}), body
    health.stack.http_runner.release()
    assert health.healthz()[1]["running"] == 0


def test_healthz_reports_stalled_with_503_once_the_ticker_has_not_ticked_for_5_seconds_and_ok_after_a_tick(health):
    health.tick()
    health.pass_seconds(4.5)
    status, body = health.healthz()
    assert (status, body["status"], body["last_tick_age_ms"]) == (200, "ok", 4500)

    health.pass_seconds(0.5)
    status, body = health.healthz()
    assert (status, body["status"], body["last_tick_age_ms"]) == (503, "stalled", 5000), body
    assert set(body) == HEALTH_KEYS

    health.pass_seconds(60)
    assert health.healthz()[0] == 503

    health.tick()
    status, body = health.healthz()
    assert (status, body["status"], body["last_tick_age_ms"]) == (200, "ok", 0)


def test_healthz_reports_stalled_when_no_tick_happened_in_the_5_seconds_after_start(health):
    assert health.healthz()[0] == 200
    health.pass_seconds(5)
    status, body = health.healthz()
    assert (status, body["status"], body["last_tick_age_ms"], body["uptime_s"]) == (503, "stalled", 5000, 5.0)


###############################################################################
# The ticker's hook (the watchdog ping) #######################################
###############################################################################

def test_the_ticker_calls_on_tick_after_each_tick_with_the_ticks_now():
    calls: list[float] = []
    scheduler = schedserver.Scheduler(on_tick=calls.append)
    scheduler.start()
    try:
        assert wait_until(lambda: len(calls) >= 1, 2.5), "no on_tick call within 2.5 s"
    finally:
        scheduler.stop()
    assert calls[-1] == scheduler.last_tick
    assert scheduler.last_tick_monotonic is not None


class BrokenTicker(schedserver.Scheduler):
    """A scheduler whose every tick fails."""

    attempts = 0

    def tick(self, now: float) -> list[schedserver.Due]:
        self.attempts += 1
        raise RuntimeError("the ticker broke")


def test_the_ticker_does_not_call_on_tick_when_the_tick_fails_so_a_failing_ticker_never_pings_the_watchdog():
    calls: list[float] = []
    scheduler = BrokenTicker(on_tick=calls.append)
    scheduler.start()
    try:
        assert wait_until(lambda: scheduler.attempts >= 1, 2.5), "the ticker never ticked"
    finally:
        scheduler.stop()        # joins the ticker: the failed tick's loop round is over
    assert calls == []


###############################################################################
# Access log ##################################################################
###############################################################################

ACCESS_LINE = re.compile(r"access GET /api/v1/curl/schedule (\d{3}) \d+(\.\d+)?ms$")


def test_with_access_log_on_each_request_logs_one_line_with_method_path_status_and_duration_but_no_token(tmp_path):
    wrong_token = "wrong-token-4b7d1e"
    with ServerProcess(tmp_path / "data", tmp_path / "scripts", env={"SCHEDSERVER_ACCESS_LOG": "true"}) as server:
        for _ in range(3):
            assert server.api("GET", CURL_PATH).status_code == 200
        assert server.api("GET", CURL_PATH, token=wrong_token).status_code == 401
        server.stop()
    lines = server.stderr_text().splitlines()
    statuses = [m.group(1) for m in (ACCESS_LINE.search(line) for line in lines) if m]
    assert statuses == ["200", "200", "200", "401"], "\n".join(lines)
    text = server.stderr_text()
    assert DEFAULT_TOKEN not in text and wrong_token not in text and "Bearer" not in text


def test_the_access_log_keeps_a_request_on_one_line_even_when_its_path_holds_an_encoded_line_break(tmp_path):
    forged = "2026-01-01 00:00:00,000 INFO forged-entry"
    with ServerProcess(tmp_path / "data", tmp_path / "scripts", env={"SCHEDSERVER_ACCESS_LOG": "true"}) as server:
        assert server.api("GET", "/no-such-route%0A" + forged.replace(" ", "%20")).status_code == 404
        server.stop()
    lines = server.stderr_text().splitlines()
    assert not [line for line in lines if line.startswith(forged)], "\n".join(lines)
    access = [line for line in lines if "forged-entry" in line]
    assert len(access) == 1 and re.search(r" access GET \S.* 404 \d+(\.\d+)?ms$", access[0]), "\n".join(lines)


def test_without_access_log_requests_log_no_access_lines(tmp_path):
    with ServerProcess(tmp_path / "data", tmp_path / "scripts") as server:
        assert server.api("GET", CURL_PATH).status_code == 200
        assert server.api("GET", "/healthz", token=None).status_code == 200
        server.stop()
    assert "access " not in server.stderr_text(), server.stderr_text()


###############################################################################
# Run markers and the recorder ################################################
###############################################################################

def http_schedule(stack: Stack, cron: str = EVERY_SECOND) -> str:
    answer = stack.app.post_json(CURL_PATH, {"cron": cron, "request": {"url": "http://127.0.0.1:9/"}},
                                 headers=ADMIN)
    return answer.json["id"]


def held_stack(root: Path, kind: str) -> tuple[Stack, str]:
    """A Stack whose runs of `kind` ("http" or "script") stay in flight until released, and an every-second
    schedule of that kind; (stack, the schedule's key)."""
    clock = FakeClock(NOW)
    held = ScriptedHttpRunner(clock)
    held.hold = True
    if kind == "script":
        write_script(root / "scripts", "jobs/a.sh", f"# @schedule {EVERY_SECOND}\necho a\n")
        stack = Stack(root, clock, script_runner=held)
        return stack, "script:jobs/a.sh"
    stack = Stack(root, clock, http_runner=held)
    return stack, f"http:{http_schedule(stack)}"


def records(stack: Stack, kind: str) -> list[dict]:
    return read_log(stack.data_dir / ("fires.log" if kind == "script" else "curl-runs.log"))


def run_id_of(record: dict) -> str:
    return record.get("run_id") or record["runId"]


def crash(stack: Stack) -> None:
    """As a SIGKILL would leave it: nothing more recorded, no marker removed, the data dir's lock gone."""
    stack._closed = True                # never closed: a close would record the runs in flight
    stack.server.data_dir.release()     # the kernel lets go of a dead process's lock
    for runner in stack.server.runners.values():
        runner.close()                  # threads and descriptors only: no run of theirs is in flight
    stack.server.deadlines.close()
    stack.deadlines.close()


def test_a_run_in_flight_has_a_private_marker_file_that_is_gone_once_its_end_is_recorded(tmp_path):
    with Stack(tmp_path, FakeClock(NOW)) as stack:
        stack.http_runner.hold = True
        schedule_id = http_schedule(stack)
        stack.pass_seconds(1)
        [run] = stack.http_runner.runs
        marker_dir = stack.data_dir / "running"
        assert stat.S_IMODE(marker_dir.stat().st_mode) == 0o700
        path = marker_dir / f"{run.run_id}.json"
        assert markers_left(stack.data_dir) == [path.name]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        marker = json.loads(path.read_text())
        assert {k: marker[k] for k in ("run_id", "kind", "ref", "slot", "trigger", "attempt")} == {
            "run_id": run.run_id, "kind": "http", "ref": schedule_id, "slot": NOW + 1, "trigger": "cron",
            "attempt": 1}
        assert records(stack, "http") == []         # nothing recorded while it is in flight

        assert stack.http_runner.release() == 1
        assert markers_left(stack.data_dir) == []
        assert [(run_id_of(r), r["status"]) for r in records(stack, "http")] == [(run.run_id, "ok")]


def test_a_script_runs_marker_names_its_process_once_it_is_spawned(tmp_path):
    write_script(tmp_path / "scripts", "jobs/slow.sh", f"# @schedule {EVERY_SECOND}\nsleep 38.{MARK}\n")
    with Stack(tmp_path, FakeClock(NOW)) as stack:
        stack.pass_seconds(1)
        assert wait_until(lambda: processes_with(f"38.{MARK}"), 5.0)
        [run] = stack.recorder.running("script:jobs/slow.sh")
        marker = json.loads((stack.data_dir / "running" / f"{run.run_id}.json").read_text())
        pid = marker["process"]["pid"]
        assert "jobs/slow.sh" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        assert marker["process"]["start_time"] == schedserver.ProcessTable.stat(pid)[2]


def test_a_run_whose_marker_cannot_be_written_still_runs_and_is_recorded_and_the_failure_is_logged(
        tmp_path, caplog):
    with Stack(tmp_path, FakeClock(NOW)) as stack:
        def disk_full(run_id: str, marker: dict, new: bool = True) -> None:
            raise OSError(28, "No space left on device")
        stack.server.markers.write = disk_full
        schedule_id = http_schedule(stack)
        with caplog.at_level(logging.ERROR, logger="schedserver"):
            stack.pass_seconds(1)
        [run] = stack.http_runner.runs
        assert [(r["schedule_id"], r["run_id"], r["status"]) for r in records(stack, "http")] == [
            (schedule_id, run.run_id, "ok")]
        assert markers_left(stack.data_dir) == []
    assert f"cannot write the marker of run {run.run_id}" in caplog.text


def test_interrupt_all_records_each_run_once_with_the_reason_and_a_later_finish_returns_none(tmp_path):
    with Stack(tmp_path, FakeClock(NOW)) as stack:
        stack.http_runner.hold = True
        http_schedule(stack)
        http_schedule(stack)
        stack.pass_seconds(1)
        runs = list(stack.http_runner.runs)
        assert len(runs) == 2 and len(markers_left(stack.data_dir)) == 2
        stack.clock.advance(2)

        interrupted = stack.recorder.interrupt_all("interrupted by shutdown")

        assert sorted(r.run_id for r in interrupted) == sorted(r.run_id for r in runs)
        assert [r.cancelled for r in runs] == ["interrupted by shutdown"] * 2
        assert sorted((run_id_of(r), r["status"], r["error"], r["duration_ms"]) for r in records(stack, "http")) == \
            sorted((r.run_id, "interrupted", "interrupted by shutdown", 2000) for r in runs)
        assert stack.recorder.count() == 0 and markers_left(stack.data_dir) == []
        assert stack.recorder.wait_idle(time.monotonic()) is True
        for run in runs:
            assert stack.recorder.finish(run, schedserver.RunResult("ok", stack.clock(), 5, status_code=200)) is None
        assert stack.http_runner.release() == 2      # the runs' own ends, later still
        assert len(records(stack, "http")) == 2, records(stack, "http")


def test_a_shutdown_past_the_grace_records_an_http_run_interrupted_in_its_schedules_history(tmp_path):
    with Stack(tmp_path, FakeClock(NOW)) as stack:
        stack.http_runner.hold = True
        schedule_id = http_schedule(stack)
        stack.pass_seconds(1)
        [run] = stack.http_runner.runs
        stack.clock.advance(2)
        assert stack.server.runs.stop(time.monotonic()) == 1     # the grace is over at once
        assert stack.http_runner.release() == 0                  # its runner was told to stop it
        shown = stack.app.get(f"{CURL_PATH}/{schedule_id}", headers=ADMIN).json
    assert shown["last_status"] == "interrupted"
    assert [(h["run_id"], h["status"], h["error"], h["duration_ms"]) for h in shown["history"]] == [
        (run.run_id, "interrupted", "interrupted by shutdown", 2000)]
    assert shown["history"][0]["scheduled_at"] == schedserver.utc_iso(NOW + 1)


def test_a_script_fire_recorded_as_interrupted_keeps_its_slot_and_run_id_and_counts_its_duration(tmp_path):
    stack, key = held_stack(tmp_path, "script")
    with stack:
        stack.pass_seconds(1)
        [run] = stack.script_runner.runs
        stack.clock.advance(2.5)
        assert stack.server.runs.stop(time.monotonic()) == 1
        [record] = records(stack, "script")
        shown = stack.app.get(EXEC + "/history", params={"scriptPath": "jobs/a.sh"}, headers=ADMIN).json
    assert {k: record[k] for k in ("ts", "scriptPath", "runId", "trigger", "attempt", "status", "error",
                                   "durationMs", "startedAt")} == {
        "ts": ms(NOW + 1), "scriptPath": "jobs/a.sh", "runId": run.run_id, "trigger": "cron", "attempt": 1,
        "status": "interrupted", "error": "interrupted by shutdown", "durationMs": 2500, "startedAt": ms(NOW + 1)}
    assert [(e["runId"], e["status"]) for e in shown["entries"]] == [(run.run_id, "interrupted")]


def test_a_shutdown_stops_the_whole_process_tree_of_a_script_run_in_flight(tmp_path):
    write_script(tmp_path / "scripts", "jobs/tree.sh",
                 f"# @schedule {EVERY_SECOND}\nsleep 35.{MARK} & sleep 36.{MARK}; wait\n")
    with Stack(tmp_path, FakeClock(NOW)) as stack:
        stack.pass_seconds(1)
        assert wait_until(lambda: len(processes_with(f".{MARK}")) >= 2, 5.0)
        [run] = stack.recorder.running("script:jobs/tree.sh")
        assert stack.server.runs.stop(time.monotonic()) == 1
        assert wait_until(lambda: not processes_with(f".{MARK}"), 5.0) is True, "a process of the run survived"
        assert wait_until(lambda: not stack.script_runner.busy(), 10.0) is True
        found = [r for r in records(stack, "script") if r["runId"] == run.run_id]
    assert [(r["status"], r["error"]) for r in found] == [("interrupted", "interrupted by shutdown")]


def test_a_run_whose_process_starts_after_shutdown_gave_up_on_it_is_killed_at_once(tmp_path):
    write_script(tmp_path / "scripts", "jobs/late.sh", f"# @schedule {NEVER}\nsleep 37.{MARK}\n")
    with Stack(tmp_path, FakeClock(NOW)) as stack:
        job = stack.scheduler.get("script:jobs/late.sh")
        run = stack.recorder.begin(job, NOW, "manual")
        stack.recorder.interrupt_all("interrupted by shutdown")
        ended: list[schedserver.RunResult] = []
        done = threading.Event()
        stack.script_runner.start(run, lambda result: (ended.append(result), done.set()))
        assert done.wait(10), "the run never ended"
        assert not processes_with(f"37.{MARK}")
        found = [r for r in records(stack, "script") if r["runId"] == run.run_id]
    assert ended[0].signal == "SIGKILL", ended
    assert [r["status"] for r in found] == ["interrupted"]


@pytest.mark.parametrize("kind", ["http", "script"])
def test_markers_a_dead_server_left_are_recorded_interrupted_once_at_the_next_start_removed_and_not_run_again(
        tmp_path, kind):
    stack, key = held_stack(tmp_path, kind)
    stack.pass_seconds(1)
    [run] = stack.recorder.running(key)
    assert markers_left(stack.data_dir) == [f"{run.run_id}.json"]
    crash(stack)

    with Stack(tmp_path, FakeClock(NOW + 1), http_runner=ScriptedHttpRunner(FakeClock(NOW + 1)),
               script_runner=ScriptedHttpRunner(FakeClock(NOW + 1))) as restarted:
        assert markers_left(restarted.data_dir) == []
        found = [r for r in records(restarted, kind) if run_id_of(r) == run.run_id]
        assert len(found) == 1, found
        assert (found[0]["status"], found[0]["error"], found[0]["trigger"], found[0]["attempt"]) == (
            "interrupted", INTERRUPTED_AT_START, "cron", 1)
        assert found[0]["scheduled_at" if kind == "http" else "ts"] == ms(NOW + 1)
        restarted.pass_seconds(1)
        runner = restarted.http_runner if kind == "http" else restarted.script_runner
        assert [r.slot for r in runner.runs] == [NOW + 2]          # the interrupted slot is not run again
        if kind == "http":
            shown = restarted.app.get(f"{CURL_PATH}/{key.split(':', 1)[1]}", headers=ADMIN).json
            assert (run.run_id, "interrupted") in [(h["run_id"], h["status"]) for h in shown["history"]]

    with Stack(tmp_path, FakeClock(NOW + 2)) as again:
        assert len([r for r in records(again, kind) if run_id_of(r) == run.run_id]) == 1


def test_an_unreadable_marker_is_removed_and_ignored(tmp_path, caplog):
    running = tmp_path / "data" / "running"
    running.mkdir(parents=True, mode=0o700)
    (tmp_path / "data").chmod(0o700)
    (running / "torn.json").write_text('{"run_id": "torn", "kind": "htt')
    (running / "list.json").write_text("[1, 2]")
    (running / "not-its-name.json").write_text(json.dumps({"run_id": "another-run", "kind": "http", "ref": "x"}))
    with caplog.at_level(logging.WARNING, logger="schedserver"):
        with Stack(tmp_path, FakeClock(NOW)) as stack:
            assert markers_left(stack.data_dir) == []
            assert records(stack, "http") == [] and records(stack, "script") == []
            assert stack.app.get(CURL_PATH, headers=ADMIN).json["meta"]["total"] == 0
    assert "unreadable run marker" in caplog.text


def test_without_markers_the_recorder_tracks_runs_in_memory_only(tmp_path):
    logs = {"http": schedserver.NdjsonLog(str(tmp_path / "curl-runs.log"), 1 << 20, 1)}
    recorder = schedserver.Recorder(logs, schedserver.RunState(str(tmp_path / "run-state.json"), logs), None,
                                    FakeClock(NOW))
    job = schedserver.Job(key="http:x", kind="http", ref="x", cron=schedserver.parse_cron(EVERY_SECOND),
                          tz=ZoneInfo("UTC"), target=schedserver.HttpTarget({"url": "http://127.0.0.1:9/"}))
    run = recorder.begin(job, NOW, "cron")
    assert recorder.count() == 1 and recorder.begin(job, NOW, "cron") is None     # one at a time
    record = recorder.finish(run, schedserver.RunResult("ok", NOW, 3, status_code=200))
    assert (record["run_id"], record["status"]) == (run.run_id, "ok")
    assert recorder.count() == 0
    assert sorted(os.listdir(tmp_path)) == ["curl-runs.log"]


###############################################################################
# Process limits ##############################################################
###############################################################################

@pytest.mark.parametrize("limits, wanted, expected_set", [
    ((1024, 524288), 65536, (65536, 524288)),        # systemd's default: raised
    ((1024, 4096), 65536, (4096, 4096)),             # never past the hard limit
    ((100000, 524288), 65536, None),                  # already above: left alone
])
def test_the_open_files_limit_is_raised_toward_what_client_connections_need(monkeypatch, limits, wanted,
                                                                            expected_set):
    calls = []
    monkeypatch.setattr(schedserver.resource, "getrlimit", lambda which: limits)
    monkeypatch.setattr(schedserver.resource, "setrlimit", lambda which, value: calls.append(value))
    now = schedserver.raise_open_file_limit(wanted)
    assert calls == ([expected_set] if expected_set else [])
    assert now == (expected_set[0] if expected_set else limits[0])

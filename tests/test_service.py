"""Running schedserver as a service: systemd notifications, signals and graceful shutdown, runs cut short by a
crash, /healthz, the access log.

Grouped by concern: what systemd is told (a test-owned NOTIFY_SOCKET and sd_notify itself), shutting down on
a signal (scripts and HTTP runs in flight, the grace, a second SIGINT), recovering runs a SIGKILL cut short,
health (the real server, then webtest with a fake monotonic clock), the ticker's hook, the access log, and
the in-flight run markers. The end-to-end tests start their own real server on 127.0.0.1; every wait has a
deadline, and every `sleep` a script starts carries MARK so that it can be found in /proc and cleaned up.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
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
import webtest

import schedserver
from e2e_helpers import CURL_PATH, DEFAULT_TOKEN, ServerProcess, wait_until
from fakes import FakeClock

EXEC = "/api/v1/exec/schedules"
EVERY_SECOND = "* * * * * *"
NEVER = "0 0 1 1 *"                 # a schedule that does not fire while the tests run (unless on New Year)
MARK = uuid.uuid4().int % 10**9     # in the argv of every `sleep` these tests start, e.g. `sleep 30.<MARK>`
NOW = 1_736_937_000.0               # 2025-01-15T10:30:00Z, for the fake wall clock
HEALTH_KEYS = {"status", "version", "uptime_s", "last_tick_age_ms", "schedules", "running"}


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
    """The run markers in a marker dir, by file name: the files with something in them (an empty marker file
    is a slot kept for the next run)."""
    if not marker_dir.is_dir():
        return {}
    found = {p.name: p.read_text() for p in marker_dir.iterdir()}
    return {name: text for name, text in found.items() if text}


def one_marker(data_dir: Path, timeout: float = 5.0) -> dict:
    """The single run marker in `<data-dir>/running` once it is there."""
    files = wait_until(lambda: marker_files(data_dir / "running"), timeout)
    assert len(files) == 1, files
    return json.loads(next(iter(files.values())))


def markers_left(data_dir: Path) -> list[str]:
    return sorted(marker_files(data_dir / "running"))


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


def script_service(tmp_path: Path, notifications: list[str],
                   service_class: type = schedserver.ScriptSchedules) -> schedserver.ScriptSchedules:
    (tmp_path / "data").mkdir(exist_ok=True)
    scripts = tmp_path / "scripts"
    write_script(scripts, "jobs/quiet.sh", f"# @schedule {NEVER}\necho quiet\n")
    fires = schedserver.NdjsonLog(str(tmp_path / "data" / "fires.log"), 1 << 20, 1)
    scheduler = schedserver.Scheduler(submit=lambda *args: None, clock=lambda: NOW)
    return service_class(str(scripts), fires, scheduler, schedserver.ScriptRunner(), clock=lambda: NOW,
                         notify=notifications.append)


def test_a_reload_is_announced_with_reloading_and_monotonic_usec_then_ready_but_not_the_start_or_a_dry_run(tmp_path):
    notifications: list[str] = []
    service = script_service(tmp_path, notifications)
    service.load()
    service.reload(dry_run=True)
    assert notifications == []          # the start's READY=1 comes from the server, once it listens

    before = monotonic_usec()
    service.reload(reason="SIGHUP")
    after = monotonic_usec()
    assert len(notifications) == 2, notifications
    first = dict(line.split("=", 1) for line in notifications[0].splitlines())
    assert first.keys() == {"RELOADING", "MONOTONIC_USEC"} and first["RELOADING"] == "1", notifications
    assert before <= int(first["MONOTONIC_USEC"]) <= after
    assert notifications[1] == "READY=1"


class VanishingScripts(schedserver.ScriptSchedules):
    """A script service whose scans fail after the first."""

    scans = 0

    def plan(self) -> schedserver.ReloadPlan:
        self.scans += 1
        if self.scans > 1:
            raise OSError("scripts dir vanished")
        return super().plan()


def test_a_reload_that_fails_still_says_ready_afterwards(tmp_path):
    notifications: list[str] = []
    service = script_service(tmp_path, notifications, VanishingScripts)
    service.load()
    with pytest.raises(OSError):
        service.reload()
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

    records = [r for r in read_log(data / "fires.log") if r.get("runId") == marker["runId"]]
    assert len(records) == 1, records
    assert records[0]["status"] == "error" and records[0]["error"] == "interrupted by shutdown", records[0]
    assert records[0]["ts"] == marker["ts"] and records[0]["scriptPath"] == "jobs/sleeper.sh"
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
    records = [r for r in fires if r.get("runId") == marker["runId"]]
    assert len(records) == 1, records
    assert records[0]["status"] == "ok", records[0]
    assert records[0]["returnPreview"] == "finished within the grace"
    assert not [r for r in fires if "interrupted" in str(r.get("error"))], fires
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
            assert marker["schedule_id"] == schedule_id
            status, elapsed = signal_and_time_exit(server, signal.SIGTERM, timeout=6)
        finally:
            server.stop()
    assert status == 0, server.stderr_text()
    assert elapsed <= 1 + 2, f"exited {elapsed:.2f} s after SIGTERM with a 1 s grace"

    records = [r for r in read_log(data / "curl-runs.log") if r.get("run_id") == marker["run_id"]]
    assert len(records) == 1, records
    assert records[0]["schedule_id"] == schedule_id
    assert records[0]["status"] == "error" and records[0]["error"] == "interrupted by shutdown", records[0]
    assert records[0]["scheduled_at"] == marker["scheduled_at"]
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
    assert not [r for r in runs if "interrupted" in str(r.get("error"))], runs
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
    assert [json.loads(text)["runId"] for text in marker_files(data / "running").values()] == [marker["runId"]]
    kill_processes_with(f"32.{MARK}")   # a script runs in its own session: SIGKILL of the server leaves it
    write_script(scripts, "jobs/crashy.sh", f"# @schedule {EVERY_SECOND}\necho after the restart\n")

    with ServerProcess(data, scripts) as second:
        def fires() -> list[dict]:
            return read_log(data / "fires.log")

        def fired_again() -> bool:
            return any(r["status"] == "ok" and r["ts"] > marker["ts"] for r in fires())

        assert wait_until(fired_again, 5.0), (fires(), second.stderr_text())
        shown = second.api("GET", EXEC + "/history", params={"scriptPath": "jobs/crashy.sh", "limit": 100})
        assert shown.status_code == 200, shown.text
    assert second.returncode == 0, second.stderr_text()

    same_slot = [r for r in fires() if r["ts"] == marker["ts"]]
    assert len(same_slot) == 1, same_slot
    assert same_slot[0]["runId"] == marker["runId"], same_slot
    assert same_slot[0]["status"] == "error" and same_slot[0]["error"] == "interrupted", same_slot
    assert [e["status"] for e in shown.json()["entries"] if e.get("runId") == marker["runId"]] == ["error"]
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
    assert runs[0]["status"] == "error" and runs[0]["error"] == "interrupted", runs[0]
    assert [(h["run_id"], h["error"]) for h in shown["history"] if h["run_id"] == marker["run_id"]] == [
        (marker["run_id"], "interrupted")]
    assert markers_left(data) == []


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
    """The app as the server builds it, with /healthz, over a scheduler whose clocks are fakes."""

    def __init__(self, data_dir: Path):
        self.wall, self.monotonic = FakeClock(NOW), FakeClock(5000.0)
        self.scheduler = schedserver.Scheduler(submit=lambda *args: None, clock=self.wall, monotonic=self.monotonic)
        curl = schedserver.CurlSchedules(
            schedserver.JournalStore(str(data_dir / "curl-schedules.json")),
            schedserver.NdjsonLog(str(data_dir / "curl-runs.log"), 1 << 20, 1),
            self.scheduler, schedserver.HttpRunner(), clock=self.wall)
        health = schedserver.Health(self.scheduler, curl, None)
        self.app = webtest.TestApp(schedserver.make_app(curl, schedserver.Auth(("admin-token",)), None, health))

    def healthz(self) -> tuple[int, dict]:
        answer = self.app.get("/healthz", expect_errors=True)
        return answer.status_int, answer.json

    def tick(self) -> None:
        self.scheduler.tick(self.wall())

    def pass_seconds(self, seconds: float) -> None:
        """Time passes and the ticker does not tick (blocked)."""
        self.wall.advance(seconds)
        self.monotonic.advance(seconds)


def test_healthz_is_ok_right_after_a_tick(tmp_path):
    harness = HealthHarness(tmp_path)
    harness.pass_seconds(1.5)
    harness.tick()
    status, body = harness.healthz()
    assert status == 200 and body["status"] == "ok", body
    assert set(body) == HEALTH_KEYS
    assert body["last_tick_age_ms"] == 0 and body["uptime_s"] == 1.5
    assert body["schedules"] == {"scripts": 0, "http": 0} and body["running"] == 0


def test_healthz_reports_stalled_with_503_once_the_ticker_has_not_ticked_for_5_seconds_and_ok_after_a_tick(tmp_path):
    harness = HealthHarness(tmp_path)
    harness.tick()
    harness.pass_seconds(4.5)
    status, body = harness.healthz()
    assert (status, body["status"], body["last_tick_age_ms"]) == (200, "ok", 4500)

    harness.pass_seconds(0.5)
    status, body = harness.healthz()
    assert (status, body["status"], body["last_tick_age_ms"]) == (503, "stalled", 5000), body
    assert set(body) == HEALTH_KEYS

    harness.pass_seconds(60)
    assert harness.healthz()[0] == 503

    harness.tick()
    status, body = harness.healthz()
    assert (status, body["status"], body["last_tick_age_ms"]) == (200, "ok", 0)


def test_healthz_reports_stalled_when_no_tick_happened_in_the_5_seconds_after_start(tmp_path):
    harness = HealthHarness(tmp_path)
    assert harness.healthz()[0] == 200
    harness.pass_seconds(5)
    status, body = harness.healthz()
    assert (status, body["status"], body["last_tick_age_ms"], body["uptime_s"]) == (503, "stalled", 5000, 5.0)


###############################################################################
# The ticker's hook (the watchdog ping) #######################################
###############################################################################

def test_the_ticker_calls_on_tick_after_each_tick_with_the_ticks_now():
    calls: list[float] = []
    scheduler = schedserver.Scheduler(submit=lambda *args: None, on_tick=calls.append)
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

    def tick(self, now: float) -> None:
        self.attempts += 1
        raise RuntimeError("the ticker broke")


def test_the_ticker_does_not_call_on_tick_when_the_tick_fails_so_a_failing_ticker_never_pings_the_watchdog():
    calls: list[float] = []
    scheduler = BrokenTicker(submit=lambda *args: None, on_tick=calls.append)
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
# In-flight run markers #######################################################
###############################################################################

EXEC_MARKER = {"surface": "exec", "ts": "2025-01-15T10:30:00.000Z", "scriptPath": "jobs/a.sh",
               "expression": EVERY_SECOND, "runId": "run-1", "trigger": "cron",
               "startedAt": "2025-01-15T10:30:00.004Z"}


class InterruptRecorder:
    def __init__(self):
        self.calls: list[tuple[dict, str]] = []

    def __call__(self, marker: dict, reason: str) -> None:
        self.calls.append((marker, reason))


def test_begin_writes_a_private_marker_file_and_done_after_finish_removes_it(tmp_path):
    marker_dir = tmp_path / "running"
    runs = schedserver.InFlightRuns(str(marker_dir))
    assert marker_dir.stat().st_mode & 0o077 == 0
    runs.begin("run-1", EXEC_MARKER, InterruptRecorder())
    (name, text), = marker_files(marker_dir).items()
    assert json.loads(text) == EXEC_MARKER
    assert (marker_dir / name).stat().st_mode & 0o077 == 0
    assert runs.count() == 1

    assert runs.finish("run-1") is True
    # Finished but not yet recorded: shutdown still waits for it, and a crash now still finds its marker.
    assert runs.count() == 1 and marker_files(marker_dir) == {name: text}
    assert runs.wait_idle(time.monotonic() + 0.05) is False

    runs.done("run-1")
    assert runs.count() == 0 and marker_files(marker_dir) == {}
    assert runs.wait_idle(time.monotonic()) is True


def test_a_reserved_marker_is_on_disk_before_its_run_begins_and_is_the_one_the_run_keeps_or_is_emptied(tmp_path):
    marker_dir = tmp_path / "running"
    runs = schedserver.InFlightRuns(str(marker_dir))
    kept = runs.reserve(EXEC_MARKER)
    let_go = runs.reserve({**EXEC_MARKER, "runId": "run-2"})
    assert len(marker_files(marker_dir)) == 2 and runs.count() == 0     # nothing in flight yet
    assert runs.recover() == []                                         # this process's own, not a dead one's
    runs.begin("run-1", EXEC_MARKER, InterruptRecorder(), reserved=kept)
    runs.release(let_go)
    assert runs.count() == 1
    assert list(marker_files(marker_dir).values()) == [(marker_dir / os.path.basename(kept[1])).read_text()]
    assert json.loads((marker_dir / os.path.basename(kept[1])).read_text()) == EXEC_MARKER
    runs.finish("run-1")
    runs.done("run-1")
    assert marker_files(marker_dir) == {} and len(list(marker_dir.iterdir())) == 2     # both slots kept empty
    assert schedserver.InFlightRuns(None).reserve(EXEC_MARKER) is None


def test_stock_makes_empty_marker_files_ahead_that_the_next_runs_use_instead_of_creating_their_own(tmp_path):
    marker_dir = tmp_path / "running"
    runs = schedserver.InFlightRuns(str(marker_dir))
    assert runs.wants_stock(3) is True
    assert runs.wants_stock(3) is False                             # asked for once, until it has run
    runs.stock(3)
    made = sorted(p.name for p in marker_dir.iterdir())
    assert len(made) == 3 and marker_files(marker_dir) == {}       # empty: no run in them
    assert runs.wants_stock(3) is False and runs.wants_stock(4) is True
    runs.stock(4)
    assert len(list(marker_dir.iterdir())) == 4
    runs.release(runs.reserve(EXEC_MARKER))                         # no run needs one made for it now
    assert len(list(marker_dir.iterdir())) == 4
    made = sorted(p.name for p in marker_dir.iterdir())
    for n in range(3):
        runs.begin(f"run-{n}", {**EXEC_MARKER, "runId": f"run-{n}"}, InterruptRecorder())
    assert sorted(p.name for p in marker_dir.iterdir()) == made   # the stocked files, no new ones
    assert len(marker_files(marker_dir)) == 3
    assert schedserver.InFlightRuns(None).wants_stock(3) is False


def test_a_marker_dir_where_files_cannot_be_made_is_logged_once_and_tried_again_only_a_minute_later(
        tmp_path, monkeypatch, caplog):
    runs = schedserver.InFlightRuns(str(tmp_path / "running"))
    real_open = os.open
    monkeypatch.setattr(schedserver.os, "open", lambda *args, **kwargs: (_ for _ in ()).throw(OSError(28, "No space")))
    assert runs.wants_stock(2) is True
    runs.stock(2)
    assert "cannot make run marker files" in caplog.text and list((tmp_path / "running").iterdir()) == []
    assert runs.wants_stock(2) is False                             # not each second
    monkeypatch.setattr(schedserver.os, "open", real_open)
    monkeypatch.setattr(schedserver.time, "monotonic", lambda: real_monotonic() + 61)
    assert runs.wants_stock(2) is True


real_monotonic = time.monotonic


def test_the_empty_marker_files_kept_are_bounded_by_the_descriptor_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(schedserver.resource, "getrlimit", lambda which: (800, 4096))
    runs = schedserver.InFlightRuns(str(tmp_path / "running"))
    assert runs.slots_kept == 100
    runs.stock(500)
    assert len(list((tmp_path / "running").iterdir())) == 100


def test_after_each_tick_the_server_has_marker_files_made_for_the_runs_due_next(tmp_path):
    config = schedserver.load_config({"data_dir": str(tmp_path / "data"), "scripts_dir": str(tmp_path / "scripts")},
                                     environ={})
    server = schedserver.Server(config)
    try:
        server.inflight = schedserver.InFlightRuns(str(tmp_path / "running"))
        server.scheduler._submit = lambda fn, *args: fn(*args)          # a worker, at once
        due = [schedserver.Job(f"exec:job-{n}.sh", schedserver.parse_cron("* * * * * *"), ZoneInfo("UTC"),
                               fire=lambda slot: None, record=lambda *args: None) for n in range(5)]
        server._get_ready(due)
        assert len(list((tmp_path / "running").iterdir())) == 5
    finally:
        server.scheduler.stop()


def test_marker_files_are_used_again_and_only_a_bounded_number_of_empty_ones_stays(tmp_path, monkeypatch):
    monkeypatch.setattr(schedserver, "MARKER_SLOTS_KEPT", 2)
    marker_dir = tmp_path / "running"
    runs = schedserver.InFlightRuns(str(marker_dir))
    for n in range(5):
        runs.begin(f"run-{n}", {**EXEC_MARKER, "runId": f"run-{n}"}, InterruptRecorder())
    assert len(marker_files(marker_dir)) == 5
    for n in range(5):
        runs.finish(f"run-{n}")
        runs.done(f"run-{n}")
    assert marker_files(marker_dir) == {} and len(list(marker_dir.iterdir())) == 2
    runs.begin("run-9", {**EXEC_MARKER, "runId": "run-9"}, InterruptRecorder())
    assert len(list(marker_dir.iterdir())) == 2         # an empty one was used again
    assert [json.loads(t)["runId"] for t in marker_files(marker_dir).values()] == ["run-9"]
    # A later start finds the marker, and nothing in the empty slot.
    assert schedserver.InFlightRuns(str(marker_dir)).recover() == [{**EXEC_MARKER, "runId": "run-9"}]
    assert list(marker_dir.iterdir()) == []


def test_interrupt_all_records_each_run_with_the_reason_and_finish_afterwards_returns_false(tmp_path):
    marker_dir = tmp_path / "running"
    runs = schedserver.InFlightRuns(str(marker_dir))
    recorder = InterruptRecorder()
    other = {**EXEC_MARKER, "runId": "run-2"}
    runs.begin("run-1", EXEC_MARKER, recorder)
    runs.begin("run-2", other, recorder)

    assert runs.interrupt_all("interrupted by shutdown", kill_grace=0.1) == 2
    assert sorted(recorder.calls, key=lambda call: call[0]["runId"]) == [
        (EXEC_MARKER, "interrupted by shutdown"), (other, "interrupted by shutdown")]
    assert runs.finish("run-1") is False and runs.finish("run-2") is False
    assert runs.count() == 0 and marker_files(marker_dir) == {}
    assert runs.wait_idle(time.monotonic()) is True


def test_interrupt_all_stops_the_runs_whole_process_group(tmp_path):
    runs = schedserver.InFlightRuns(str(tmp_path / "running"))
    script = f"sleep 35.{MARK} & sleep 36.{MARK}; wait"
    proc = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True)
    try:
        run = runs.begin("run-1", EXEC_MARKER, InterruptRecorder())
        run.set_pgid(proc.pid)
        assert wait_until(lambda: len(processes_with(f".{MARK}")) >= 2, 3.0)
        runs.interrupt_all("interrupted by shutdown", kill_grace=0.5)
        assert proc.wait(timeout=3) < 0
        assert wait_until(lambda: not processes_with(f".{MARK}"), 2.0) is True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=3)


def test_a_run_whose_process_starts_after_shutdown_gave_up_on_it_is_killed_at_once(tmp_path):
    runs = schedserver.InFlightRuns(str(tmp_path / "running"))
    run = runs.begin("run-1", EXEC_MARKER, InterruptRecorder())
    runs.interrupt_all("interrupted by shutdown", kill_grace=0.1)
    proc = subprocess.Popen(["sleep", f"37.{MARK}"], start_new_session=True)
    try:
        run.set_pgid(proc.pid)
        assert proc.wait(timeout=3) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=3)


def test_recover_returns_the_markers_left_on_disk_ignores_unreadable_ones_and_deletes_them_all(tmp_path):
    marker_dir = tmp_path / "running"
    marker_dir.mkdir()
    curl_marker = {"surface": "curl", "schedule_id": "0f8c1b9e-0000-4000-8000-000000000001", "run_id": "run-9",
                   "scheduled_at": "2025-01-15T10:30:00.000Z", "started_at": "2025-01-15T10:30:00.010Z",
                   "trigger": "cron"}
    (marker_dir / "run-1.json").write_text(json.dumps(EXEC_MARKER))
    (marker_dir / "run-9.json").write_text(json.dumps(curl_marker))
    (marker_dir / "torn.json").write_text('{"surface": "exec", "runId"')
    (marker_dir / "list.json").write_text("[1, 2]")
    (marker_dir / "run-3.json.tmp-123-456").write_text("{}")      # an atomic write cut short
    (marker_dir / "slot-1-1.json").write_text("")                   # an empty marker slot

    runs = schedserver.InFlightRuns(str(marker_dir))
    found = runs.recover()
    assert sorted(found, key=json.dumps) == sorted([EXEC_MARKER, curl_marker], key=json.dumps)
    assert list(marker_dir.iterdir()) == []
    assert runs.recover() == []


def test_without_a_marker_dir_runs_are_tracked_in_memory_only(tmp_path):
    runs = schedserver.InFlightRuns()
    runs.begin("run-1", EXEC_MARKER, InterruptRecorder())
    assert runs.count() == 1 and runs.finish("run-1") is True
    assert runs.recover() == []
    assert list(tmp_path.iterdir()) == []


def test_a_script_fire_recorded_as_interrupted_keeps_its_slot_and_run_id_and_counts_its_duration(tmp_path):
    service = script_service(tmp_path, [])
    service.clock = lambda: NOW + 2.5
    marker = {**EXEC_MARKER, "ts": schedserver.utc_iso(NOW, ms=True),
              "startedAt": schedserver.utc_iso(NOW + 0.5, ms=True)}
    service.record_interrupted(marker, "interrupted")
    [record] = read_log(tmp_path / "data" / "fires.log")
    assert {k: record[k] for k in ("ts", "scriptPath", "runId", "trigger", "status", "error", "durationMs")} == {
        "ts": marker["ts"], "scriptPath": "jobs/a.sh", "runId": "run-1", "trigger": "cron", "status": "error",
        "error": "interrupted", "durationMs": 2000}


def test_an_http_run_recorded_as_interrupted_shows_in_its_schedules_history(tmp_path):
    clock = FakeClock(NOW)
    scheduler = schedserver.Scheduler(submit=lambda *args: None, clock=clock)
    curl = schedserver.CurlSchedules(
        schedserver.JournalStore(str(tmp_path / "curl-schedules.json")),
        schedserver.NdjsonLog(str(tmp_path / "curl-runs.log"), 1 << 20, 1),
        scheduler, schedserver.HttpRunner(), clock=clock)
    created = curl.create({"cron": NEVER, "request": {"url": "http://127.0.0.1:9/"}})
    clock.advance(3)
    marker = {"surface": "curl", "schedule_id": created["id"], "run_id": "run-7",
              "scheduled_at": schedserver.utc_iso(NOW, ms=True), "started_at": schedserver.utc_iso(NOW + 1, ms=True),
              "trigger": "cron"}
    curl.record_interrupted(marker, "interrupted by shutdown")
    [record] = read_log(tmp_path / "curl-runs.log")
    assert (record["run_id"], record["status"], record["error"], record["duration_ms"]) == (
        "run-7", "error", "interrupted by shutdown", 2000)
    shown = curl.get(created["id"])
    assert shown["last_status"] == "error"
    assert shown["history"][0]["run_id"] == "run-7" and shown["history"][0]["error"] == "interrupted by shutdown"


@pytest.mark.parametrize("limits, wanted, expected_set", [
    ((1024, 524288), 65536, (65536, 524288)),        # systemd's default: raised
    ((1024, 4096), 65536, (4096, 4096)),             # never past the hard limit
    ((100000, 524288), 65536, None),                  # already above: left alone
])
def test_the_open_files_limit_is_raised_toward_what_kept_connections_need(monkeypatch, limits, wanted, expected_set):
    calls = []
    monkeypatch.setattr(schedserver.resource, "getrlimit", lambda which: limits)
    monkeypatch.setattr(schedserver.resource, "setrlimit", lambda which, value: calls.append(value))
    now = schedserver.raise_open_file_limit(wanted)
    assert calls == ([expected_set] if expected_set else [])
    assert now == (expected_set[0] if expected_set else limits[0])


@pytest.mark.parametrize("store", ["good", "corrupt"])
def test_start_up_loads_with_the_collector_off_and_leaves_it_on_afterwards_even_when_it_fails(tmp_path, store):
    data = tmp_path / "data"
    data.mkdir()
    if store == "corrupt":
        (data / "curl-schedules.json").write_text('{"version": 1, "schedules": [{"id": 1}]}')
    config = schedserver.load_config({"data_dir": str(data), "scripts_dir": str(tmp_path / "scripts"), "port": 0,
                                      "host": "127.0.0.1"}, environ={})
    server = schedserver.Server(config)
    seen: list[bool] = []
    load = server.curl.load
    server.curl.load = lambda: (seen.append(schedserver.gc.isenabled()), load())[1]
    try:
        if store == "corrupt":
            with pytest.raises(schedserver.StartupError):
                server.start()
        else:
            server.start()
        assert seen == [False]                  # off while loading
        assert schedserver.gc.isenabled()       # on again, started or not
    finally:
        server.stop()
        schedserver.gc.unfreeze()


def test_a_stop_signal_while_starting_lets_go_of_what_the_start_began_and_exits_0(tmp_path, monkeypatch):
    for name in [n for n in os.environ if n.startswith("SCHEDSERVER_")]:
        monkeypatch.delenv(name)
    scripts = tmp_path / "scripts"
    write_script(scripts, "slow.chk", "# @schedule 0 0 1 1 *\n")
    (tmp_path / "schedserver.toml").write_text(
        '[exec.preflight]\n".chk" = ["/bin/sh", "-c", "sleep 30.%d", "check"]\n'
        '[exec.interpreters]\n".chk" = ["/bin/sh"]\n' % MARK)
    services: list[schedserver.ScriptSchedules] = []
    began: list[schedserver.SyntaxChecks] = []
    begin_checks, load = schedserver.ScriptSchedules.begin_checks, schedserver.CurlSchedules.load

    def begin_and_remember(self, drivers=1):
        services.append(self)
        begin_checks(self, drivers)

    def sigterm_then_load(self):
        began.append(services[0]._begun)            # the checks are running
        os.kill(os.getpid(), signal.SIGTERM)         # as systemd stopping the unit while it starts
        load(self)
    monkeypatch.setattr(schedserver.ScriptSchedules, "begin_checks", begin_and_remember)
    monkeypatch.setattr(schedserver.CurlSchedules, "load", sigterm_then_load)
    try:
        status = schedserver.main(["--config", str(tmp_path / "schedserver.toml"), "--port", "0",
                                   "--data-dir", str(tmp_path / "data"), "--scripts-dir", str(scripts)])
    finally:
        schedserver.gc.unfreeze()

    assert status == 0
    assert began and began[0] is not None
    driver = began[0]._drivers[0]
    assert driver.done and driver.proc.returncode is not None and not os.path.exists(driver.scratch)
    assert not processes_with(f"sleep 30.{MARK}")


def test_a_sighup_while_starting_is_ignored_so_the_starts_own_scan_still_counts_downtime(tmp_path, caplog):
    config = schedserver.load_config({"data_dir": str(tmp_path / "data"), "scripts_dir": str(tmp_path / "scripts"),
                                      "port": 0, "host": "127.0.0.1"}, environ={})
    server = schedserver.Server(config)
    load = server.curl.load
    server.curl.load = lambda: (server.reload_scripts(), load())      # a SIGHUP during the start
    try:
        with caplog.at_level("INFO", logger="schedserver"):
            server.start()
            server.reload_scripts()                                    # and one after it
            wait_until(lambda: "scripts reloaded (SIGHUP)" in caplog.text, timeout=10)
    finally:
        server.stop()
        schedserver.gc.unfreeze()

    assert "SIGHUP while starting: ignored" in caplog.text
    assert caplog.text.count("scripts reloaded (SIGHUP)") == 1 and "scripts reloaded (start)" in caplog.text

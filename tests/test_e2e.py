"""End to end: the real schedserver process on port 0, a real HTTP target on 127.0.0.1, real files.

Grouped by concern: firing at the cron cadence, surviving a restart, owning the data dir, toggling and
deleting, refusing bad config, securing files and secrets, the command line. Every wait has a deadline.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import sys
import time
from datetime import datetime

import pytest

from e2e_helpers import (CURL_PATH, DEFAULT_TOKEN, REPO_ROOT, ServerProcess, TargetServer, run_schedserver,
                         schedserver_argv, schedserver_env, wait_until)

SECRET_HEADER = "Bearer SECRET-HEADER-VALUE"
SECRET_BODY = "SECRET-BODY-VALUE"


@pytest.fixture
def target():
    with TargetServer() as server:
        yield server


@pytest.fixture
def data_dir(tmp_path):
    return tmp_path / "data"


@pytest.fixture
def scripts_dir(tmp_path):
    return tmp_path / "scripts"


@pytest.fixture
def server(data_dir, scripts_dir):
    with ServerProcess(data_dir, scripts_dir) as process:
        yield process


def create_schedule(server: ServerProcess, cron: str, request: dict, **fields) -> dict:
    answer = server.api("POST", CURL_PATH, json={"cron": cron, "request": request, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()


def get_when(server: ServerProcess, schedule_id: str, predicate, timeout: float = 3.0) -> dict:
    """GET the schedule until `predicate(body)` holds (at most `timeout` seconds); the last body either way."""
    shown: dict = {}

    def check():
        shown.update(server.api("GET", f"{CURL_PATH}/{schedule_id}").json())
        return predicate(shown)

    wait_until(check, timeout)
    return shown


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def one_line(stderr: str) -> str:
    """The single line a refused start prints; fails when there are more, or a traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


###############################################################################
# Firing at the cron cadence ##################################################
###############################################################################

def test_a_schedule_created_over_rest_hits_the_target_every_two_seconds_with_its_method_headers_and_body(
        server, target):
    payload = {"event": "tick", "n": [1, 2, 3], "nested": {"ok": True}}
    created = create_schedule(server, "*/2 * * * * *", {
        "url": target.url + "/hook", "method": "post", "headers": {"X-Custom": "custom-value"}, "json": payload,
    }, name="cadence")
    schedule_id = created["id"]
    assert created["enabled"] is True and created["request"]["method"] == "POST"
    assert created["next_run"] is not None

    arrivals = target.wait_for(3, timeout=8, path="/hook")

    assert len(arrivals) >= 2, f"{len(arrivals)} arrivals; stderr:\n{server.stderr_text()}"
    for earlier, later in zip(arrivals, arrivals[1:]):
        assert 1.5 <= later.at - earlier.at <= 2.6, [a.at for a in arrivals]
    for arrival in arrivals:
        assert int(arrival.at) % 2 == 0 and arrival.at % 1 < 0.5, f"arrived at {arrival.at:.3f}, not an even second"
        assert arrival.method == "POST"
        assert arrival.headers.get("X-Custom") == "custom-value"
        assert json.loads(arrival.body) == payload
        assert arrival.headers.get("X-Schedserver-Schedule-Id") == schedule_id
        scheduled_at = arrival.headers.get("X-Schedserver-Scheduled-At")
        assert scheduled_at, "X-Schedserver-Scheduled-At is missing"
        assert 0 <= arrival.at - epoch(scheduled_at) < 1.0, (scheduled_at, arrival.at)

    shown = get_when(server, schedule_id, lambda shown: any(run["status"] == "ok" for run in shown["history"]))
    assert shown["last_run"] is not None
    assert shown["last_status"] == "ok"
    ok_runs = [run for run in shown["history"] if run["status"] == "ok"]
    assert all(run["status_code"] == 200 for run in ok_runs)
    assert all(run["run_id"] and run["scheduled_at"] and run["started_at"] for run in ok_runs)


###############################################################################
# Restart #####################################################################
###############################################################################

def test_after_a_restart_the_schedule_is_listed_unchanged_keeps_its_history_and_fires_again(
        data_dir, scripts_dir, target):
    request = {"url": target.url + "/restart", "method": "PUT", "headers": {"X-Trace": "restart"},
               "body": "plain body"}
    first = ServerProcess(data_dir, scripts_dir).start()
    try:
        created = create_schedule(first, "* * * * * *", request, name="survivor")
        schedule_id = created["id"]
        assert target.wait_for(1, timeout=4, path="/restart"), first.stderr_text()
        before = get_when(first, schedule_id, lambda shown: shown["history"])
        assert before["history"], "no history before the restart"
        listed_before = first.api("GET", CURL_PATH).json()["items"]
    finally:
        status = first.stop()
    assert status == 0, f"SIGTERM should stop schedserver cleanly; stderr:\n{first.stderr_text()}"

    with ServerProcess(data_dir, scripts_dir) as second:
        restarted_at = time.time()
        listed = second.api("GET", CURL_PATH).json()["items"]
        assert [item["id"] for item in listed] == [schedule_id]
        stable = ("id", "cron", "enabled", "created_at", "name", "timezone", "request")
        assert {k: listed[0][k] for k in stable} == {k: listed_before[0][k] for k in stable}

        after = second.api("GET", f"{CURL_PATH}/{schedule_id}").json()
        assert after["request"] == before["request"]
        assert after["request"]["headers"] == {"X-Trace": "restart"} and after["request"]["body"] == "plain body"
        assert {run["run_id"] for run in before["history"]} <= {run["run_id"] for run in after["history"]}
        assert after["last_run"] is not None

        fired = target.wait_for(1, timeout=4, path="/restart", since=restarted_at)
        assert fired, f"no fire after the restart; stderr:\n{second.stderr_text()}"
        assert fired[0].method == "PUT" and fired[0].body == b"plain body"
        assert fired[0].headers.get("X-Schedserver-Schedule-Id") == schedule_id


###############################################################################
# One server per data dir #####################################################
###############################################################################

def test_a_second_instance_on_the_same_data_dir_exits_2_naming_it_and_the_first_keeps_serving(
        server, data_dir, scripts_dir):
    started = time.monotonic()
    second = run_schedserver(schedserver_argv(data_dir, scripts_dir), timeout=10)
    assert time.monotonic() - started < 8

    assert second.returncode == 2, second.stderr
    assert str(data_dir) in one_line(second.stderr)
    assert server.returncode is None
    assert server.api("GET", CURL_PATH).status_code == 200


###############################################################################
# Toggle and delete ###########################################################
###############################################################################

def test_disabling_stops_the_arrivals_re_enabling_resumes_them_and_deleting_stops_them_for_good(server, target):
    schedule_id = create_schedule(server, "* * * * * *", {"url": target.url + "/toggle"})["id"]
    assert target.wait_for(1, timeout=4, path="/toggle"), server.stderr_text()

    answer = server.api("PATCH", f"{CURL_PATH}/{schedule_id}/toggle", json={"enabled": False})
    disabled_at = time.time()
    assert answer.status_code == 200, answer.text
    assert answer.json()["enabled"] is False and answer.json()["next_run"] is None
    time.sleep(3)
    late = target.received("/toggle", since=disabled_at)
    # A fire already handed to a worker when the toggle landed may still arrive, right away; nothing after.
    assert len(late) <= 1 and all(a.at - disabled_at < 0.5 for a in late), [a.at - disabled_at for a in late]
    shown = server.api("GET", f"{CURL_PATH}/{schedule_id}").json()
    assert shown["enabled"] is False and shown["next_run"] is None

    answer = server.api("PATCH", f"{CURL_PATH}/{schedule_id}/toggle", json={"enabled": True})
    enabled_at = time.time()
    assert answer.status_code == 200, answer.text
    assert answer.json()["enabled"] is True and answer.json()["next_run"] is not None
    assert target.wait_for(1, timeout=3, path="/toggle", since=enabled_at), "no arrival after re-enabling"

    answer = server.api("DELETE", f"{CURL_PATH}/{schedule_id}")
    deleted_at = time.time()
    assert answer.status_code == 200 and answer.json() == {"id": schedule_id}
    assert server.api("GET", f"{CURL_PATH}/{schedule_id}").json()["error"] == "SCHEDULE_NOT_FOUND"
    time.sleep(3)
    late = target.received("/toggle", since=deleted_at)
    assert len(late) <= 1 and all(a.at - deleted_at < 0.5 for a in late), [a.at - deleted_at for a in late]
    assert server.api("GET", CURL_PATH).json()["items"] == []


###############################################################################
# Bad config ##################################################################
###############################################################################

def test_a_port_already_in_use_exits_2_with_one_line_naming_the_port(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_schedserver(schedserver_argv(tmp_path / "data", tmp_path / "scripts", port))
    assert result.returncode == 2, result.stderr
    assert str(port) in one_line(result.stderr)


def test_an_unknown_key_in_the_toml_config_exits_2_with_one_line_naming_the_file_and_key(tmp_path):
    config = tmp_path / "schedserver.toml"
    config.write_text('[server]\nhost = "127.0.0.1"\ncolour = "blue"\n')
    result = run_schedserver(schedserver_argv(tmp_path / "data", tmp_path / "scripts", 0, "--config", str(config)))
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert str(config) in line and "colour" in line


def test_an_invalid_timezone_from_the_environment_exits_2_with_one_line_naming_it(tmp_path):
    env = schedserver_env(SCHEDSERVER_TIMEZONE="Mars/Olympus_Mons")
    result = run_schedserver(schedserver_argv(tmp_path / "data", tmp_path / "scripts"), env=env)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert "SCHEDSERVER_TIMEZONE" in line and "Mars/Olympus_Mons" in line


@pytest.mark.parametrize("content", [
    b'{"version": 1, "schedules": [{"id": "torn',            # a write cut short
    b'["not", "a", "schedules", "document"]\n',             # valid JSON, wrong shape
], ids=["truncated-json", "wrong-shape"])
def test_a_corrupt_schedules_file_exits_2_with_one_line_and_is_left_byte_for_byte(tmp_path, content):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    store = data_dir / "curl-schedules.json"
    store.write_bytes(content)
    result = run_schedserver(schedserver_argv(data_dir, tmp_path / "scripts"))
    assert result.returncode == 2, result.stderr
    assert str(store) in one_line(result.stderr)
    assert store.read_bytes() == content
    assert [p.name for p in data_dir.iterdir() if p.name.startswith("curl-schedules.json.tmp")] == []


@pytest.mark.parametrize("line", [
    b'{"seq": 2, "put": {"id": "b", "cron": \x00 garbage}\n',   # not JSON
    b'["seq", 2]\n',                                              # JSON, not a change
    b'{"seq": 2, "rename": "a"}\n',                               # an object, not a change
], ids=["not-json", "not-an-object", "not-a-change"])
def test_a_corrupt_journal_line_exits_2_with_one_line_naming_the_journal_and_both_files_are_left_byte_for_byte(
        tmp_path, line):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    snapshot, journal = data_dir / "curl-schedules.json", data_dir / "curl-schedules.journal"
    snapshot.write_bytes(b'{"version": 1, "seq": 0, "schedules": []}\n')
    good = json.dumps({"seq": 1, "put": {"id": "3f2a1b6c-0d4e-4f5a-8b7c-9d0e1f2a3b4c", "cron": "0 0 0 1 1 *",
                                         "request": {"url": "http://127.0.0.1:9/"}, "name": None, "enabled": True,
                                         "timezone": "UTC", "created_at": "2025-01-10T12:00:00.000Z",
                                         "enabled_at": "2025-01-10T12:00:00.000Z"}}).encode() + b"\n"
    journal.write_bytes(good + line + good.replace(b'"seq": 1', b'"seq": 3'))
    before = {path: path.read_bytes() for path in (snapshot, journal)}
    result = run_schedserver(schedserver_argv(data_dir, tmp_path / "scripts"))
    assert result.returncode == 2, result.stderr
    assert str(journal) in one_line(result.stderr) and "line 2" in one_line(result.stderr)
    assert {path: path.read_bytes() for path in before} == before
    assert [p.name for p in data_dir.iterdir() if ".tmp-" in p.name] == []


###############################################################################
# Files and secrets ###########################################################
###############################################################################

def test_with_no_token_configured_the_first_start_writes_a_private_token_file_that_authenticates(
        data_dir, scripts_dir, target):
    with ServerProcess(data_dir, scripts_dir, token=None) as server:
        token_file = data_dir / "api-token"
        assert token_file.is_file()
        token = token_file.read_text().strip()
        assert len(token) >= 32

        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        assert str(token_file) in server.stderr_text()

        assert server.api("GET", CURL_PATH, token=None).status_code == 401
        assert server.api("GET", CURL_PATH, token="wrong-token").status_code == 401
        assert server.api("GET", CURL_PATH, token=token).status_code == 200
        create = server.api("POST", CURL_PATH, token=token,
                            json={"cron": "0 0 0 1 1 *", "request": {"url": target.url + "/never"}})
        assert create.status_code == 201, create.text
        journal = data_dir / "curl-schedules.journal"    # the definition is there until a compaction
        assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    assert token not in server.stderr_text()

    # The second start reuses the file, and still never logs the token.
    with ServerProcess(data_dir, scripts_dir, token=None) as again:
        assert (data_dir / "api-token").read_text().strip() == token
        assert again.api("GET", CURL_PATH, token=token).json()["meta"]["total"] == 1
    assert token not in again.stderr_text()


def test_stored_header_values_bodies_and_api_tokens_never_reach_the_log(data_dir, scripts_dir, target):
    with TargetServer(status=500) as failing:
        request = {"url": target.url + "/secret", "method": "POST",
                   "headers": {"Authorization": SECRET_HEADER, "X-Api-Key": "SECRET-API-KEY"},
                   "json": {"password": SECRET_BODY}}
        failing_request = dict(request, url=failing.url + "/secret-failing")
        stderr = []
        with ServerProcess(data_dir, scripts_dir) as first:
            ids = [create_schedule(first, "* * * * * *", request)["id"],
                   create_schedule(first, "* * * * * *", failing_request)["id"]]
            assert first.api("GET", CURL_PATH, token="WRONG-TOKEN-VALUE").status_code == 401
            assert target.wait_for(2, timeout=4, path="/secret"), first.stderr_text()
            assert failing.wait_for(2, timeout=4, path="/secret-failing"), first.stderr_text()
        stderr.append(first.stderr_text())

        with ServerProcess(data_dir, scripts_dir, env={"SCHEDSERVER_LOG_LEVEL": "DEBUG"}) as second:
            restarted_at = time.time()
            assert target.wait_for(2, timeout=4, path="/secret", since=restarted_at), second.stderr_text()
            assert failing.wait_for(2, timeout=4, path="/secret-failing", since=restarted_at)
            assert target.received("/secret")[-1].headers.get("Authorization") == SECRET_HEADER
        stderr.append(second.stderr_text())

    logged = "".join(stderr)
    assert all(schedule_id in logged for schedule_id in ids), "expected a log line per run, naming the schedule"
    assert "500" in logged
    for secret in (SECRET_HEADER, "SECRET-HEADER-VALUE", "SECRET-API-KEY", SECRET_BODY, DEFAULT_TOKEN,
                   "WRONG-TOKEN-VALUE"):
        assert secret not in logged, f"{secret!r} appears in the server's stderr"
    runs_log = (data_dir / "curl-runs.log").read_text()
    assert "SECRET" not in runs_log


###############################################################################
# Command line ################################################################
###############################################################################

def _version() -> str:
    source = (REPO_ROOT / "schedserver.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', source, re.M).group(1)


@pytest.mark.parametrize("argv", [
    [sys.executable, "schedserver.py", "--version"],
    [sys.executable, "-m", "schedserver", "--version"],
], ids=["script", "module"])
def test_version_prints_the_version(argv):
    result = run_schedserver(argv)
    assert result.returncode == 0, result.stderr
    assert _version() in result.stdout


def test_the_installed_console_script_prints_the_same_version_when_installed():
    # CI installs with `pip install -e`, which puts the script next to the interpreter running the tests.
    script = shutil.which("schedserver", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("schedserver is not installed next to this interpreter (CI's pip install -e puts it there)")
    result = run_schedserver([script, "--version"])
    assert result.returncode == 0, result.stderr
    assert _version() in result.stdout


def test_the_api_keeps_answering_when_the_process_holds_more_than_1024_descriptors(tmp_path):
    # Connections kept for HTTP runs due next can take the process past descriptor 1023, where select() fails:
    # here 1,100 descriptors are taken before the server starts, so every socket it opens is above them.
    server = ServerProcess(tmp_path / "data", tmp_path / "scripts")
    serve_args = server.argv[server.argv.index("schedserver") + 1:]
    server.argv = [sys.executable, "-c",
                   "import os, runpy, sys; held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]; "
                   "sys.argv = ['schedserver', *sys.argv[1:]]; runpy.run_module('schedserver', run_name='__main__')",
                   *serve_args]
    with server:
        for _ in range(3):
            assert server.api("GET", CURL_PATH).status_code == 200
        created = server.api("POST", CURL_PATH, json={"cron": "0 0 0 1 1 *", "request": {"url": "http://127.0.0.1:9/"}})
        assert created.status_code == 201
        assert server.api("GET", "/healthz").status_code == 200

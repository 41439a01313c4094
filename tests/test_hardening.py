"""Tests of the hardening changes: hostile input to the API, hostile bytes to the real server, config that
must be refused, a private data dir, late fires, script preflight, fires-log rotation, secrets in the script
environment and a damaged schedules file.

Grouped by concern. The API and the services are driven through the harness's Stack (the real server loaded
over a tmp dir, fake clock, a pool that runs only when told); the raw-socket tests talk to the real server in a
subprocess. Every wait has a deadline and all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import uuid
from datetime import datetime

import pytest

import schedserver
from e2e_helpers import ServerProcess
from fakes import FakeClock
from harness import ADMIN, Stack

CURL = "/api/v1/curl/schedule"
EXEC = "/api/v1/exec/schedules"
MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HOURLY = "# @schedule 0 * * * *\necho hourly\n"


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


NOW = at("2026-01-15T11:59:30.250Z")


###############################################################################
# The harness ##################################################################
###############################################################################

class Api:
    """A loaded Stack (the server as it starts, fake clock, no threads) and raw requests to its app."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.http = stack.http
        self.app = stack.app

    def post_raw(self, path: str, raw: str | bytes, content_type: str = "application/json", headers=ADMIN):
        return self.app.post(path, raw, headers=headers, content_type=content_type, expect_errors=True)

    def create_raw(self, raw: str | bytes, content_type: str = "application/json"):
        return self.post_raw(CURL, raw, content_type)

    def get(self, path: str, headers=ADMIN, **kwargs):
        return self.app.get(path, headers=headers, expect_errors=True, **kwargs)


@pytest.fixture
def api(tmp_path):
    with Stack(tmp_path, FakeClock(NOW)) as stack:
        yield Api(stack)


def curl_error(response, status: int, code: str, *mentions: str) -> dict:
    """An error in the HTTP schedule surface's shape: exactly {"error": CODE, "message": text}."""
    assert response.status_int == status, response.body
    assert response.content_type == "application/json"
    body = json.loads(response.body)
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    for text in mentions:
        assert text in body["message"], (text, body["message"])
    assert b"Traceback" not in response.body
    return body


def exec_error(response, status: int, code: str, *mentions: str) -> dict:
    """An error in the script surface's shape: exactly {error: title, code, message, timestamp}."""
    assert response.status_int == status, response.body
    assert response.content_type == "application/json"
    body = json.loads(response.body)
    assert set(body) == {"error", "code", "message", "timestamp"}, body
    assert body["code"] == code, body
    assert MS_UTC.match(body["timestamp"]), body
    for text in mentions:
        assert text in body["message"], (text, body["message"])
    assert b"Traceback" not in response.body
    return body


def create_body(**request_fields) -> str:
    return json.dumps({"cron": "0 * * * *", "request": {"url": "http://127.0.0.1:9/hook", **request_fields}})


###############################################################################
# Hostile input to the API #####################################################
###############################################################################

class TestHostileInput:
    def test_a_header_value_that_is_not_latin_1_answers_400_naming_the_header(self, api):
        response = api.create_raw(create_body(headers={"X-Price": "10 €"}))
        curl_error(response, 400, "INVALID_PARAMETER", "X-Price")
        assert api.http.count() == 0

    def test_a_string_body_with_a_lone_surrogate_answers_400(self, api):
        raw = '{"cron": "0 * * * *", "request": {"url": "http://127.0.0.1:9/hook", "body": "half \\ud800 pair"}}'
        curl_error(api.create_raw(raw), 400, "INVALID_PARAMETER", "request.body")
        assert api.http.count() == 0

    def test_a_json_body_with_a_lone_surrogate_answers_400(self, api):
        # validate_request promises "a JSON value of valid Unicode text"; a lone surrogate is not.
        raw = '{"cron": "0 * * * *", "request": {"url": "http://127.0.0.1:9/hook", "json": {"k": "\\ud800"}}}'
        curl_error(api.create_raw(raw), 400, "INVALID_PARAMETER", "request.json")
        assert api.http.count() == 0

    @pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
    @pytest.mark.parametrize("where", ["json", "timeout"])
    def test_nan_or_infinity_written_literally_answers_400_invalid_parameter(self, api, constant, where):
        raw = '{"cron": "0 * * * *", "request": {"url": "http://127.0.0.1:9/hook", "%s": %s}}' % (where, constant)
        curl_error(api.create_raw(raw), 400, "INVALID_PARAMETER")
        assert api.http.count() == 0

    @pytest.mark.parametrize("opening, closing", [("[", "]"), ('{"a":', "}")], ids=["arrays", "objects"])
    def test_json_nested_100000_deep_answers_400_not_500(self, api, opening, closing):
        raw = opening * 100_000 + ("1" if opening != "[" else "") + closing * 100_000
        curl_error(api.create_raw(raw), 400, "INVALID_PARAMETER")

    def test_request_json_is_stored_up_to_the_depth_cap_and_refused_beyond_it_never_with_500(self, api):
        def create(depth):
            raw = '{"cron": "0 * * * *", "request": {"url": "http://127.0.0.1:9/", "json": %s%s}}' % (
                "[" * depth, "]" * depth)
            return api.create_raw(raw)

        assert create(schedserver.MAX_JSON_DEPTH).status_int == 201
        curl_error(create(schedserver.MAX_JSON_DEPTH + 1), 400, "INVALID_PARAMETER", "request.json")
        statuses = {depth: create(depth).status_int for depth in range(schedserver.MAX_JSON_DEPTH + 1, 1200, 37)}
        assert set(statuses.values()) == {400}, statuses

    @pytest.mark.parametrize("name", ["page", "limit"])
    def test_a_page_or_limit_of_5000_digits_answers_400_naming_it(self, api, name):
        curl_error(api.get(CURL, params={name: "9" * 5000}), 400, "INVALID_PARAMETER", name)

    def test_a_history_limit_of_5000_digits_answers_400_in_the_script_surface_shape(self, api):
        body = exec_error(api.get(EXEC + "/history", params={"limit": "9" * 5000}), 400, "VALIDATION_ERROR", "limit")
        assert body["error"] == "Invalid parameter format"

    @pytest.mark.parametrize("path", [CURL, EXEC + "/list"])
    def test_an_authorization_header_that_is_not_utf_8_answers_401_in_json(self, api, path):
        response = api.app.get(path, extra_environ={"HTTP_AUTHORIZATION": "Bearer \xff\xfe"}, expect_errors=True)
        assert response.status_int == 401
        assert response.content_type == "application/json"
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "error" in response.json

    def test_a_json_body_declared_as_text_plain_answers_400_invalid_parameter(self, api):
        curl_error(api.create_raw(create_body(), content_type="text/plain"), 400, "INVALID_PARAMETER", "text/plain")
        assert api.http.count() == 0

    def test_a_json_body_declared_as_text_plain_to_the_script_surface_answers_400_in_its_shape(self, api):
        response = api.post_raw(EXEC + "/trigger", '{"scriptPath": "a.sh"}', content_type="text/plain")
        exec_error(response, 400, "VALIDATION_ERROR", "text/plain")

    def test_an_id_that_is_not_utf_8_answers_404_schedule_not_found(self, api):
        curl_error(api.get(CURL + "/%ff"), 404, "SCHEDULE_NOT_FOUND")


###############################################################################
# Hostile bytes to the real server #############################################
###############################################################################

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    with ServerProcess(root / "data", root / "scripts") as process:
        yield process


def raw_exchange(url: str, request: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to the server and read its whole answer (it closes after an error); status, headers, body."""
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return status, headers, body


RAW_REQUESTS = {
    "negative-content-length": (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n", 400),
    "huge-content-length": (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5000000\r\n\r\n", 413),
    "gzip-transfer-encoding": (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    "non-ascii-byte-in-uri": (b"GET %s/\xff HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400),
}


class TestRawRequestsToTheRealServer:
    def test_a_garbage_request_line_answers_400_in_json(self, live):
        status, headers, body = raw_exchange(live.url, b"GARBAGE\r\n\r\n")
        assert status == 400
        assert headers["content-type"] == "application/json"
        assert "error" in json.loads(body)
        assert live.api("GET").status_code == 200

    @pytest.mark.parametrize("name", list(RAW_REQUESTS))
    def test_a_malformed_request_to_the_http_surface_answers_json_with_the_right_status(self, live, name):
        template, expected = RAW_REQUESTS[name]
        status, headers, body = raw_exchange(live.url, template.replace(b"%s", CURL.encode()))
        assert status == expected, body
        assert headers["content-type"] == "application/json"
        answer = json.loads(body)
        assert set(answer) == {"error", "message"}, answer
        assert live.api("GET").status_code == 200

    @pytest.mark.parametrize("name", list(RAW_REQUESTS))
    def test_a_malformed_request_to_the_script_surface_answers_json_in_its_shape(self, live, name):
        template, expected = RAW_REQUESTS[name]
        status, headers, body = raw_exchange(live.url, template.replace(b"%s", (EXEC + "/reload").encode()))
        assert status == expected, body
        assert headers["content-type"] == "application/json"
        answer = json.loads(body)
        assert set(answer) == {"error", "code", "message", "timestamp"}, answer
        assert live.api("GET", EXEC + "/list").status_code == 200

    def test_the_server_logged_no_traceback_for_any_of_them(self, live):
        for template, _ in RAW_REQUESTS.values():
            raw_exchange(live.url, template.replace(b"%s", CURL.encode()))
        assert live.api("GET").status_code == 200
        assert live.returncode is None
        assert "Traceback" not in live.stderr_text()


###############################################################################
# Config that must be refused ##################################################
###############################################################################

@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """main() reads the real environment and configures the schedserver logger: isolate both."""
    for name in list(os.environ):
        if name.startswith("SCHEDSERVER_") or name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    logger, waitress_logger = logging.getLogger("schedserver"), logging.getLogger("waitress")
    saved = (logger.handlers[:], logger.level, logger.propagate, waitress_logger.level)
    yield tmp_path
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]
    waitress_logger.setLevel(saved[3])


def dirs(tmp_path) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--scripts-dir", str(tmp_path / "scripts")]


class TestRefusedConfig:
    def test_a_host_that_cannot_be_resolved_exits_2_with_one_line_and_no_traceback(self, clean_env, capsys):
        code = schedserver.main(["--host", "no-such-host.invalid", "--port", "0", *dirs(clean_env)])
        out, err = capsys.readouterr()
        assert code == 2
        assert out == ""
        assert len(err.splitlines()) == 1 and err.endswith("\n"), err
        assert err.startswith("schedserver: ") and "no-such-host.invalid" in err
        assert "Traceback" not in err

    def test_a_token_given_as_a_string_instead_of_a_list_exits_2_without_showing_it(self, clean_env, capsys):
        config = clean_env / "schedserver.toml"
        config.write_text('[auth]\ntokens = "s3cr3t-value"\n')
        code = schedserver.main(["--config", str(config), *dirs(clean_env)])
        out, err = capsys.readouterr()
        assert code == 2
        assert len(err.splitlines()) == 1, err
        assert "auth.tokens" in err
        assert "s3cr3t-value" not in err + out

    def test_a_misfire_grace_of_zero_in_the_config_file_is_refused(self, clean_env, capsys):
        config = clean_env / "schedserver.toml"
        config.write_text("[scheduler]\nmisfire_grace_seconds = 0\n")
        assert schedserver.main(["--config", str(config), *dirs(clean_env)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "misfire_grace_seconds" in err

    def test_a_misfire_grace_of_zero_in_the_environment_is_refused(self):
        with pytest.raises(schedserver.ConfigError, match="SCHEDSERVER_MISFIRE_GRACE_SECONDS"):
            schedserver.load_config({}, environ={"SCHEDSERVER_MISFIRE_GRACE_SECONDS": "0"})


###############################################################################
# A private data dir ###########################################################
###############################################################################

def test_a_pre_existing_data_dir_open_to_others_is_made_private_at_start(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    with Stack(tmp_path):
        mode = stat.S_IMODE(os.stat(data_dir).st_mode)
    assert mode == 0o700, oct(mode)


def test_a_data_dir_writable_by_every_user_is_refused_with_exit_2_and_left_as_it_is(clean_env, capsys):
    data_dir = clean_env / "data"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    code = schedserver.main(["--port", "0", *dirs(clean_env)])
    out, err = capsys.readouterr()
    assert code == 2
    assert len(err.splitlines()) == 1 and "writable by every user" in err, err
    assert "Traceback" not in err + out
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o777
    assert list(data_dir.iterdir()) == []


def test_a_data_dir_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir(mode=0o700)
    stack = Stack(tmp_path, load=False)
    try:
        someone_else = os.geteuid() + 1
        monkeypatch.setattr(schedserver.os, "geteuid", lambda: someone_else)
        with pytest.raises(schedserver.ConfigError, match="owned by uid"):
            stack.server.load()
    finally:
        monkeypatch.undo()
        stack.close()


def test_temp_files_left_by_a_write_that_was_killed_are_removed_at_start_and_nothing_else(tmp_path):
    data_dir = tmp_path / "data"
    (data_dir / "running").mkdir(parents=True, mode=0o700)
    data_dir.chmod(0o700)
    stale = data_dir / ".schedserver-tmp-curl-schedules.json-4242-139900"
    stale.write_text('{"schedules": [{"request": {"headers": {"Authorization": "Bearer secret"}}}]}')
    stale_marker = data_dir / "running" / ".schedserver-tmp-0f8c1b9e.json-4242-139901"
    stale_marker.write_text('{"run_id": "0f8c1b9e"}')
    kept = data_dir / "notes.txt"
    kept.write_text("not ours to remove")
    with Stack(tmp_path) as stack:
        assert stack.http.count() == 0
    assert not stale.exists() and not stale_marker.exists()
    assert kept.read_text() == "not ours to remove"


###############################################################################
# Late fires ###################################################################
###############################################################################

EVERY_SECOND = "* * * * * *"


def read_log(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def queued_fire(tmp_path) -> tuple[Stack, str, float]:
    """A Stack with an every-second HTTP schedule whose first slot is due and handed to the (idle) pool."""
    stack = Stack(tmp_path, FakeClock("2026-01-15T12:00:00Z"))
    created = stack.app.post_json(CURL, {"cron": EVERY_SECOND, "request": {"url": "http://127.0.0.1:9/"}},
                                  headers=ADMIN).json
    stack.clock.advance(1)
    slot = stack.clock()
    stack.tick()
    assert len(stack.pool.pending) == 1, "the due slot was handed to the pool"
    return stack, created["id"], slot


def test_a_fire_that_waited_in_the_queue_past_the_misfire_grace_is_recorded_missed_instead_of_running(tmp_path):
    stack, schedule_id, slot = queued_fire(tmp_path)
    with stack:
        stack.clock.advance(31)     # every worker was busy beyond the grace before this one got to it
        stack.pool.run_all()

        assert stack.http_runner.runs == []
        [record] = read_log(stack.data_dir / "curl-runs.log")
        assert (record["status"], record["scheduled_at"], record["count"], record["last_scheduled_at"]) == (
            "missed", schedserver.utc_iso(slot, ms=True), 1, schedserver.utc_iso(slot, ms=True))
        shown = stack.app.get(f"{CURL}/{schedule_id}", headers=ADMIN).json
        assert [(h["status"], h["scheduled_at"], h.get("count")) for h in shown["history"]] == [
            ("missed", schedserver.utc_iso(slot), 1)]
        assert stack.recorder.running(f"http:{schedule_id}") == []
        assert list((stack.data_dir / "running").iterdir()) == []


def test_a_fire_that_waited_in_the_queue_within_the_grace_still_runs(tmp_path):
    stack, schedule_id, slot = queued_fire(tmp_path)
    with stack:
        stack.clock.advance(29)
        stack.pool.run_all()
        assert [run.slot for run in stack.http_runner.runs] == [slot]
        [record] = read_log(stack.data_dir / "curl-runs.log")
        assert (record["status"], record["scheduled_at"]) == ("ok", schedserver.utc_iso(slot, ms=True))


###############################################################################
# Script preflight #############################################################
###############################################################################

BASH_ARRAY_SCRIPT = '# @schedule */5 * * * *\nnames=(alpha beta)\necho "${names[@]}"\n'


def write_script(root, rel: str, text: str, executable: bool = False):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755 if executable else 0o644)
    return path


def dry_run(tmp_path, scripts: dict[str, tuple[str, bool]]) -> dict:
    """A running server's dry-run reload after `scripts` (rel -> (text, executable)) were put in its dir."""
    with Stack(tmp_path) as stack:
        for rel, (text, executable) in scripts.items():
            write_script(stack.scripts_dir, rel, text, executable)
        return stack.scripts.reload(dry_run=True)


def failure_reason(answer: dict, rel: str) -> str | None:
    return next((f["reason"] for f in answer["failed"] if f["path"] == rel), None)


class TestPreflight:
    def test_an_executable_bash_script_named_sh_is_checked_by_bash_and_registers(self, tmp_path):
        answer = dry_run(tmp_path, {"x.sh": ("#!/bin/bash\n" + BASH_ARRAY_SCRIPT, True)})
        assert answer["failed"] == []
        assert answer["added"] == ["x.sh"]

    def test_the_same_script_without_shebang_or_exec_bit_fails_preflight_under_bin_sh(self, tmp_path):
        answer = dry_run(tmp_path, {"x.sh": (BASH_ARRAY_SCRIPT, False)})
        assert answer["added"] == []
        reason = failure_reason(answer, "x.sh")
        assert reason is not None and reason.startswith("preflight failed:"), answer

    def test_an_extensionless_python_script_run_through_env_is_compiled_and_a_syntax_error_fails(self, tmp_path):
        answer = dry_run(tmp_path, {"report": (
            "#!/usr/bin/env python3\n# @schedule 0 * * * *\ndef broken(:\n    pass\n", True)})
        assert answer["added"] == []
        reason = failure_reason(answer, "report")
        assert reason is not None and reason.startswith("preflight failed: SyntaxError"), answer

    def test_an_extensionless_python_script_run_through_env_that_compiles_registers(self, tmp_path):
        answer = dry_run(tmp_path, {"report": ("#!/usr/bin/env python3\n# @schedule 0 * * * *\nprint('ok')\n", True)})
        assert (answer["added"], answer["failed"]) == (["report"], [])


###############################################################################
# Fires-log rotation across a restart ##########################################
###############################################################################

def fire_record(rel: str, ts: str, run_id: str) -> dict:
    return {"ts": ts, "scriptPath": rel, "expression": "0 * * * *", "runId": run_id, "status": "ok",
            "durationMs": 7, "trigger": "cron", "attempt": 1, "startedAt": ts, "loggedAt": ts,
            "returnPreview": "done"}


def rotating_fires(data) -> schedserver.NdjsonLog:
    return schedserver.NdjsonLog(str(data / "fires.log"), max_bytes=4096, backups=3)


def fill_until_rotated(fires: schedserver.NdjsonLog) -> int:
    """After an a.sh fire, b.sh fires until the log has rotated once; how many b.sh fires."""
    fires.append(fire_record("a.sh", "2026-01-15T09:00:00.000Z", "run-a"))
    written = 0
    while not os.path.exists(f"{fires.path}.1"):
        fires.append(fire_record("b.sh", "2026-01-15T10:00:00.000Z", f"run-b-{written}"))
        written += 1
        assert written < 1000, "the log never rotated"
    return written


def last_fires(stack: Stack) -> dict[str, tuple]:
    return {item["scriptRel"]: (item["lastFireAt"], item["lastFireStatus"], item["lastFireRunId"])
            for item in stack.scripts.list()["schedules"]}


def test_last_fire_survives_a_restart_when_it_has_rotated_into_the_first_backup(tmp_path):
    root, data = tmp_path / "scripts", tmp_path / "data"
    write_script(root, "a.sh", HOURLY)
    write_script(root, "b.sh", HOURLY)
    data.mkdir(mode=0o700)
    written = fill_until_rotated(rotating_fires(data))
    assert b"run-a" not in (data / "fires.log").read_bytes()
    assert b"run-a" in (data / "fires.log.1").read_bytes()

    with Stack(tmp_path, FakeClock(NOW), fires_log_max_bytes=4096, fires_log_backups=3) as restarted:
        listed = last_fires(restarted)
    assert listed["a.sh"] == ("2026-01-15T09:00:00.000Z", "ok", "run-a")
    assert listed["b.sh"][2] == f"run-b-{written - 1}"


def test_a_restart_replays_from_the_saved_run_state_even_when_that_log_file_has_rotated_into_a_backup(
        tmp_path, caplog):
    root, data = tmp_path / "scripts", tmp_path / "data"
    write_script(root, "a.sh", HOURLY)
    write_script(root, "b.sh", HOURLY)
    data.mkdir(mode=0o700)
    fires = rotating_fires(data)
    fires.append(fire_record("b.sh", "2026-01-15T08:00:00.000Z", "run-b-early"))
    config = {"fires_log_max_bytes": 4096, "fires_log_backups": 3}
    Stack(tmp_path, FakeClock(NOW), **config).close()       # a clean stop saves the run state after that line
    assert (data / "run-state.json").exists()
    inode = (data / "fires.log").stat().st_ino

    # Written after the save, by a process that died before saving again; the saved file rotates into .1.
    written = fill_until_rotated(fires)
    assert (data / "fires.log.1").stat().st_ino == inode

    with caplog.at_level(logging.INFO, logger="schedserver"):
        with Stack(tmp_path, FakeClock(NOW), **config) as restarted:
            listed = last_fires(restarted)
    assert f"({1 + written} run records replayed)" in caplog.text, caplog.text
    assert listed["a.sh"] == ("2026-01-15T09:00:00.000Z", "ok", "run-a")
    assert listed["b.sh"][2] == f"run-b-{written - 1}"


###############################################################################
# Secrets in the script environment ############################################
###############################################################################

@pytest.mark.parametrize("kind", ["tokens", "read_tokens"])
@pytest.mark.parametrize("value", ["tok-123", "Bearer tok-123", "user=me;token=tok-123;x=1"])
def test_the_script_environment_drops_a_variable_whose_value_contains_a_token(tmp_path, monkeypatch, kind, value):
    monkeypatch.setenv("UPSTREAM_AUTH", value)
    monkeypatch.setenv("HARMLESS_SETTING", "kept")
    write_script(tmp_path / "scripts", "env.sh",
                 '# @schedule 0 * * * *\necho "${UPSTREAM_AUTH:-absent} ${HARMLESS_SETTING:-missing}"\n')
    tokens = {"tokens": ("admin-token",), "read_tokens": ("read-token",)}
    tokens[kind] += ("tok-123",)
    # The script runner as the server wires it: scripts get the server's environment for them.
    servers: list[schedserver.Server] = []
    deadlines = schedserver.DeadlineWatcher()
    runner = schedserver.ScriptRunner(deadlines, environment=lambda extra: servers[0].environment(extra))
    try:
        with Stack(tmp_path, FakeClock(NOW), script_runner=runner, **tokens) as stack:
            servers.append(stack.server)
            answer = stack.app.post_json(EXEC + "/trigger", {"scriptPath": "env.sh"}, headers=ADMIN).json
    finally:
        deadlines.close()
    assert answer["status"] == "ok", answer
    assert answer["returnPreview"] == "absent kept"


###############################################################################
# A damaged schedules file #####################################################
###############################################################################

def test_a_stored_schedule_with_an_empty_request_stops_the_start_with_a_startup_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    path = data / "curl-schedules.json"
    document = {"version": 1, "schedules": [{
        "id": str(uuid.uuid4()), "cron": "0 * * * *", "request": {}, "name": None, "enabled": True,
        "timezone": "UTC", "created_at": "2026-01-15T10:00:00.000Z", "enabled_at": "2026-01-15T10:00:00.000Z"}]}
    path.write_text(json.dumps(document))
    before = path.read_bytes()
    stack = Stack(tmp_path, FakeClock(NOW), load=False)
    try:
        with pytest.raises(schedserver.StartupError, match="not a valid schedules file"):
            stack.server.load()
    finally:
        stack.close()
    assert path.read_bytes() == before

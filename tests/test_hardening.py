"""Tests of the hardening changes: hostile input to the API, hostile bytes to the real server, config that
must be refused, a private data dir, late fires, script preflight, fires-log rotation, secrets in the script
environment and a damaged schedules file.

Grouped by concern. The API is driven through webtest over an app built as the server builds it (fake clock,
recording submit); the raw-socket tests talk to the real server in a subprocess. Every wait has a deadline and
all traffic stays on 127.0.0.1.
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
import webtest

import schedserver
from e2e_helpers import DEFAULT_TOKEN, ServerProcess, wait_until
from fakes import FakeClock, RecordingSubmit

CURL = "/api/v1/curl/schedule"
EXEC = "/api/v1/exec/schedules"
ADMIN = {"Authorization": "Bearer admin-token"}
MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HOURLY = "# @schedule 0 * * * *\necho hourly\n"


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


NOW = at("2026-01-15T11:59:30.250Z")


###############################################################################
# Fakes and the harness ########################################################
###############################################################################

class Harness:
    """Both services over one tmp dir and the app over them, as Server.start() wires them."""

    def __init__(self, tmp_path):
        self.root = tmp_path / "scripts"
        self.data = tmp_path / "data"
        self.root.mkdir()
        self.data.mkdir()
        self.clock = FakeClock(NOW)
        self.submit = RecordingSubmit()
        self.scheduler = schedserver.Scheduler(submit=self.submit, clock=self.clock)
        self.curl = schedserver.CurlSchedules(
            schedserver.JournalStore(str(self.data / "curl-schedules.json")),
            schedserver.NdjsonLog(str(self.data / "curl-runs.log"), 1 << 20, 3),
            self.scheduler, schedserver.HttpRunner(clock=self.clock), clock=self.clock)
        self.curl.load()
        self.scripts = schedserver.ScriptSchedules(
            str(self.root), schedserver.NdjsonLog(str(self.data / "fires.log"), 1 << 20, 3), self.scheduler,
            schedserver.ScriptRunner(clock=self.clock, kill_grace=0.2), clock=self.clock)
        self.app = webtest.TestApp(schedserver.make_app(self.curl, schedserver.Auth(("admin-token",)), self.scripts))

    def post_raw(self, path: str, raw: str | bytes, content_type: str = "application/json", headers=ADMIN):
        return self.app.post(path, raw, headers=headers, content_type=content_type, expect_errors=True)

    def create_raw(self, raw: str | bytes, content_type: str = "application/json"):
        return self.post_raw(CURL, raw, content_type)

    def get(self, path: str, headers=ADMIN, **kwargs):
        return self.app.get(path, headers=headers, expect_errors=True, **kwargs)


@pytest.fixture
def api(tmp_path) -> Harness:
    return Harness(tmp_path)


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
        assert api.curl.count() == 0

    def test_a_string_body_with_a_lone_surrogate_answers_400(self, api):
        raw = '{"cron": "0 * * * *", "request": {"url": "http://127.0.0.1:9/hook", "body": "half \\ud800 pair"}}'
        curl_error(api.create_raw(raw), 400, "INVALID_PARAMETER", "request.body")
        assert api.curl.count() == 0

    def test_a_json_body_with_a_lone_surrogate_answers_400(self, api):
        # validate_request promises "a JSON value of valid Unicode text"; a lone surrogate is not.
        raw = '{"cron": "0 * * * *", "request": {"url": "http://127.0.0.1:9/hook", "json": {"k": "\\ud800"}}}'
        curl_error(api.create_raw(raw), 400, "INVALID_PARAMETER", "request.json")
        assert api.curl.count() == 0

    @pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
    @pytest.mark.parametrize("where", ["json", "timeout"])
    def test_nan_or_infinity_written_literally_answers_400_invalid_parameter(self, api, constant, where):
        raw = '{"cron": "0 * * * *", "request": {"url": "http://127.0.0.1:9/hook", "%s": %s}}' % (where, constant)
        curl_error(api.create_raw(raw), 400, "INVALID_PARAMETER")
        assert api.curl.count() == 0

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
        assert api.curl.count() == 0

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

def test_a_pre_existing_data_dir_open_to_others_is_made_private_at_start(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    config = schedserver.load_config(
        {"host": "127.0.0.1", "port": "0", "data_dir": str(data_dir), "scripts_dir": str(tmp_path / "scripts")},
        environ={"SCHEDSERVER_TOKEN": DEFAULT_TOKEN})
    server = schedserver.Server(config)
    try:
        server.start()
        mode = stat.S_IMODE(os.stat(data_dir).st_mode)
    finally:
        server.stop()
    assert mode == 0o700, oct(mode)


def test_temp_files_left_by_a_write_that_was_killed_are_removed_at_start(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    stale = data_dir / "curl-schedules.json.tmp-4242-139900"
    stale.write_text('{"schedules": [{"request": {"headers": {"Authorization": "Bearer secret"}}}]}')
    kept = data_dir / "notes.txt"
    kept.write_text("not ours to remove")
    config = schedserver.load_config(
        {"host": "127.0.0.1", "port": "0", "data_dir": str(data_dir), "scripts_dir": str(tmp_path / "scripts")},
        environ={"SCHEDSERVER_TOKEN": DEFAULT_TOKEN})
    server = schedserver.Server(config)
    try:
        server.start()
    finally:
        server.stop()
    assert not stale.exists()
    assert kept.read_text() == "not ours to remove"


###############################################################################
# Late fires ###################################################################
###############################################################################

class RecordingJob:
    """A job that records its fires and its missed/skipped records."""

    def __init__(self, expression: str = "* * * * * *"):
        self.fired: list[float] = []
        self.records: list[tuple] = []
        self.job = schedserver.Job(key="job", spec=schedserver.parse_cron(expression),
                                   tz=schedserver.load_timezone("UTC"), fire=self.fired.append,
                                   record=lambda *args: self.records.append(args))


def test_a_fire_that_waited_in_the_queue_past_the_misfire_grace_is_recorded_missed_instead_of_running():
    clock = FakeClock(at("2026-01-15T12:00:00Z"))
    submit = RecordingSubmit()
    scheduler = schedserver.Scheduler(misfire_grace=30, clock=clock, submit=submit)
    recording = RecordingJob()
    scheduler.add(recording.job, anchor=clock())
    clock.advance(1)
    slot = clock()
    scheduler.tick(clock())
    assert len(submit.pending) == 1, "the due slot was handed to the pool"

    clock.advance(31)           # every worker was busy beyond the grace before this one got to it
    submit.run_all()

    assert recording.fired == []
    assert recording.records == [("missed", slot, 1, slot)]
    assert not scheduler.is_running("job")


def test_a_fire_that_waited_in_the_queue_within_the_grace_still_runs():
    clock = FakeClock(at("2026-01-15T12:00:00Z"))
    submit = RecordingSubmit()
    scheduler = schedserver.Scheduler(misfire_grace=30, clock=clock, submit=submit)
    recording = RecordingJob()
    scheduler.add(recording.job, anchor=clock())
    clock.advance(1)
    slot = clock()
    scheduler.tick(clock())
    clock.advance(29)
    submit.run_all()
    assert recording.fired == [slot]
    assert recording.records == []


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


def dry_run(scripts_dir, data_dir) -> dict:
    data_dir.mkdir(exist_ok=True)
    scripts = schedserver.ScriptSchedules(
        str(scripts_dir), schedserver.NdjsonLog(str(data_dir / "fires.log"), 1 << 20, 3),
        schedserver.Scheduler(submit=lambda *a: None), schedserver.ScriptRunner())
    return scripts.reload(dry_run=True)


def failure_reason(answer: dict, rel: str) -> str | None:
    return next((f["reason"] for f in answer["failed"] if f["path"] == rel), None)


class TestPreflight:
    def test_an_executable_bash_script_named_sh_is_checked_by_bash_and_registers(self, tmp_path):
        write_script(tmp_path / "scripts", "x.sh", "#!/bin/bash\n" + BASH_ARRAY_SCRIPT, executable=True)
        answer = dry_run(tmp_path / "scripts", tmp_path / "data")
        assert answer["failed"] == []
        assert answer["added"] == ["x.sh"]

    def test_the_same_script_without_shebang_or_exec_bit_fails_preflight_under_bin_sh(self, tmp_path):
        write_script(tmp_path / "scripts", "x.sh", BASH_ARRAY_SCRIPT)
        answer = dry_run(tmp_path / "scripts", tmp_path / "data")
        assert answer["added"] == []
        reason = failure_reason(answer, "x.sh")
        assert reason is not None and reason.startswith("preflight failed:"), answer

    def test_an_extensionless_python_script_run_through_env_is_compiled_and_a_syntax_error_fails(self, tmp_path):
        write_script(tmp_path / "scripts", "report",
                     "#!/usr/bin/env python3\n# @schedule 0 * * * *\ndef broken(:\n    pass\n", executable=True)
        answer = dry_run(tmp_path / "scripts", tmp_path / "data")
        assert answer["added"] == []
        reason = failure_reason(answer, "report")
        assert reason is not None and reason.startswith("preflight failed: SyntaxError"), answer

    def test_an_extensionless_python_script_run_through_env_that_compiles_registers(self, tmp_path):
        write_script(tmp_path / "scripts", "report",
                     "#!/usr/bin/env python3\n# @schedule 0 * * * *\nprint('ok')\n", executable=True)
        answer = dry_run(tmp_path / "scripts", tmp_path / "data")
        assert (answer["added"], answer["failed"]) == (["report"], [])


###############################################################################
# Fires-log rotation across a restart ##########################################
###############################################################################

def fire_record(rel: str, ts: str, run_id: str) -> dict:
    return {"ts": ts, "scriptPath": rel, "expression": "0 * * * *", "runId": run_id, "status": "ok",
            "durationMs": 7, "trigger": "cron", "startedAt": ts, "loggedAt": ts, "returnPreview": "done"}


def test_last_fire_survives_a_restart_when_it_has_rotated_into_the_first_backup(tmp_path):
    root, data = tmp_path / "scripts", tmp_path / "data"
    write_script(root, "a.sh", HOURLY)
    write_script(root, "b.sh", HOURLY)
    data.mkdir()
    fires_path = data / "fires.log"
    fires = schedserver.NdjsonLog(str(fires_path), max_bytes=4096, backups=3)
    fires.append(fire_record("a.sh", "2026-01-15T09:00:00.000Z", "run-a"))
    written = 0
    while not os.path.exists(f"{fires_path}.1"):
        fires.append(fire_record("b.sh", "2026-01-15T10:00:00.000Z", f"run-b-{written}"))
        written += 1
        assert written < 1000, "the log never rotated"
    assert b"run-a" not in fires_path.read_bytes()
    assert b"run-a" in (data / "fires.log.1").read_bytes()

    restarted = schedserver.ScriptSchedules(
        str(root), schedserver.NdjsonLog(str(fires_path), max_bytes=4096, backups=3),
        schedserver.Scheduler(submit=lambda *a: None), schedserver.ScriptRunner(), clock=FakeClock(NOW))
    restarted.load()

    listed = {item["scriptRel"]: item for item in restarted.list()["schedules"]}
    assert (listed["a.sh"]["lastFireAt"], listed["a.sh"]["lastFireStatus"], listed["a.sh"]["lastFireRunId"]) == \
        ("2026-01-15T09:00:00.000Z", "ok", "run-a")
    assert listed["b.sh"]["lastFireRunId"] == f"run-b-{written - 1}"


###############################################################################
# Secrets in the script environment ############################################
###############################################################################

@pytest.mark.parametrize("value", ["tok-123", "Bearer tok-123", "user=me;token=tok-123;x=1"])
def test_the_script_environment_drops_a_variable_whose_value_contains_a_token(tmp_path, monkeypatch, value):
    monkeypatch.setenv("UPSTREAM_AUTH", value)
    monkeypatch.setenv("HARMLESS_SETTING", "kept")
    root, data = tmp_path / "scripts", tmp_path / "data"
    write_script(root, "env.sh", '# @schedule 0 * * * *\necho "${UPSTREAM_AUTH:-absent} ${HARMLESS_SETTING:-missing}"\n')
    data.mkdir()
    scripts = schedserver.ScriptSchedules(
        str(root), schedserver.NdjsonLog(str(data / "fires.log"), 1 << 20, 3),
        schedserver.Scheduler(submit=lambda *a: None), schedserver.ScriptRunner(kill_grace=0.2),
        secret_values=("tok-123",), clock=FakeClock(NOW))
    scripts.load()
    answer = scripts.trigger({"scriptPath": "env.sh"})
    assert answer["status"] == "ok", answer
    assert answer["returnPreview"] == "absent kept"


###############################################################################
# A damaged schedules file #####################################################
###############################################################################

def test_a_stored_schedule_with_an_empty_request_stops_the_start_with_a_startup_error(tmp_path):
    path = tmp_path / "curl-schedules.json"
    document = {"version": 1, "schedules": [{
        "id": str(uuid.uuid4()), "cron": "0 * * * *", "request": {}, "name": None, "enabled": True,
        "timezone": "UTC", "created_at": "2026-01-15T10:00:00.000Z", "enabled_at": "2026-01-15T10:00:00.000Z"}]}
    path.write_text(json.dumps(document))
    before = path.read_bytes()
    curl = schedserver.CurlSchedules(
        schedserver.JournalStore(str(path)), schedserver.NdjsonLog(str(tmp_path / "curl-runs.log"), 1 << 20, 3),
        schedserver.Scheduler(submit=lambda *a: None), schedserver.HttpRunner())
    with pytest.raises(schedserver.StartupError, match="not a valid schedules file"):
        curl.load()
    assert path.read_bytes() == before

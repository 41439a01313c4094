"""Logs as JSON (issue 17, item 5): `server.log_format = "json"` makes the REAL server process (tests/e2e_helpers.
ServerProcess) write one JSON object per line on stderr, with ts, level, logger and message, and a run's ids as
fields (run_id, kind, schedule, status). Every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from pathlib import Path

import pytest

import schedserver
from e2e_helpers import ServerProcess, TargetServer, wait_until

NEVER = "0 0 0 1 1 *"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def json_lines(text: str) -> list[dict]:
    """Every line of `text` as a JSON object (AssertionError naming the first line that is not one)."""
    entries = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def assert_shape(entry: dict) -> None:
    assert {"ts", "level", "logger", "message"} <= set(entry), entry
    assert TS.match(entry["ts"]), entry
    assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), entry
    assert entry["logger"] == "schedserver" or entry["logger"].startswith("schedserver."), entry
    assert isinstance(entry["message"], str)


def with_run(entries: list[dict], run_id: str) -> list[dict]:
    return [e for e in entries if e.get("run_id") == run_id]


@pytest.fixture
def scripts(tmp_path) -> Path:
    d = tmp_path / "scripts"
    (d / "ops").mkdir(parents=True)
    (d / "ops" / "ok.sh").write_text("#!/bin/sh\n# @schedule 0 0 0 1 1 *\necho fine\n")
    (d / "ops" / "fails.sh").write_text("#!/bin/sh\n# @schedule 0 0 0 1 1 *\necho broken >&2\nexit 2\n")
    return d


def test_json_format_writes_one_object_per_line_with_each_runs_ids(tmp_path, scripts):
    (tmp_path / "schedserver.toml").write_text('[server]\nlog_format = "json"\n')
    with TargetServer() as target:
        server = ServerProcess(tmp_path / "data", scripts, extra_args=("--config", str(tmp_path / "schedserver.toml")))
        with server, schedserver.Client(server.url, server.token) as client:
            created = client.curl.schedules.create(cron=NEVER, request={"url": target.url + "/x"})
            http_run = client.curl.schedules.run(created["id"])
            ok = client.exec.schedules.trigger_schedule(script_path="ops/ok.sh")
            failed = client.exec.schedules.trigger_schedule(script_path="ops/fails.sh")
    entries = json_lines(server.stderr_text())
    assert entries, "nothing was logged"
    for entry in entries:
        assert_shape(entry)
    assert any("schedserver listening on http://127.0.0.1:" in e["message"] for e in entries)

    [http_line] = with_run(entries, http_run["run_id"])
    assert (http_line["kind"], http_line["schedule"], http_line["status"], http_line["level"]) == \
        ("http", created["id"], "ok", "INFO")
    assert http_line["message"].startswith(f"http run {created['id']} trigger=manual status=ok http_status=200")
    [ok_line] = with_run(entries, ok["runId"])
    assert (ok_line["kind"], ok_line["schedule"], ok_line["status"]) == ("script", "ops/ok.sh", "ok")
    [failed_line] = with_run(entries, failed["runId"])
    assert (failed_line["kind"], failed_line["schedule"], failed_line["status"]) == ("script", "ops/fails.sh",
                                                                                     "error")
    assert "error=broken" in failed_line["message"]
    # Lines that are not about a run have no run fields.
    assert all("run_id" not in e for e in entries if "listening" in e["message"])


def test_json_format_from_the_environment_and_interrupted_runs_are_warnings_with_ids(tmp_path):
    started = tmp_path / "started"
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "long.sh").write_text(f"#!/bin/sh\n# @schedule * * * * * *\ntouch '{started}'\n"
                                     "i=0\nwhile [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n")
    server = ServerProcess(tmp_path / "data", scripts, env={"SCHEDSERVER_LOG_FORMAT": "json",
                                                             "SCHEDSERVER_SHUTDOWN_GRACE_SECONDS": "0"})
    with server:
        assert wait_until(started.exists, timeout=15), server.stderr_text()
        assert wait_until(lambda: '"status": "skipped"' in server.stderr_text(), timeout=15)
    assert server.returncode == 0
    entries = json_lines(server.stderr_text())
    for entry in entries:
        assert_shape(entry)
    interrupted = [e for e in entries if e.get("status") == "interrupted"]
    assert len(interrupted) == 1, entries
    assert (interrupted[0]["level"], interrupted[0]["kind"], interrupted[0]["schedule"]) == ("WARNING", "script",
                                                                                             "long.sh")
    assert re.fullmatch(r"[0-9a-f-]{36}", interrupted[0]["run_id"])
    skipped = [e for e in entries if e.get("status") == "skipped"]
    assert skipped and all((e["kind"], e["schedule"]) == ("script", "long.sh") for e in skipped)
    assert len({e["run_id"] for e in skipped}) == len(skipped)
    # The run's ids in the log are the ones its record holds.
    history = [json.loads(line) for line in (tmp_path / "data" / "fires.log").read_text().splitlines()]
    assert interrupted[0]["run_id"] in {r["runId"] for r in history if r["status"] == "interrupted"}


def test_a_value_with_a_newline_cannot_split_a_json_line(tmp_path):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "evil\nname.sh").write_text("#!/bin/sh\n# @schedule not a cron\n")
    server = ServerProcess(tmp_path / "data", scripts, env={"SCHEDSERVER_LOG_FORMAT": "json"})
    with server:
        pass
    entries = json_lines(server.stderr_text())
    assert any("evil\nname.sh" in e["message"] for e in entries), entries


def test_json_stays_json_at_debug_level_when_requests_queue(tmp_path):
    """At DEBUG the web server's own messages show too (a request waiting for a free thread): JSON as well."""
    flag, started = tmp_path / "flag", tmp_path / "started"
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "hold.sh").write_text(f"#!/bin/sh\n# @schedule 0 0 0 1 1 *\ntouch '{started}'\ni=0\n"
                                     f"while [ ! -e '{flag}' ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n")
    server = ServerProcess(tmp_path / "data", scripts, env={"SCHEDSERVER_LOG_FORMAT": "json",
                                                             "SCHEDSERVER_LOG_LEVEL": "DEBUG",
                                                             "SCHEDSERVER_THREADS": "1"})
    with server, schedserver.Client(server.url, server.token) as client:
        holder = threading.Thread(target=client.exec.schedules.trigger_schedule, args=("hold.sh",))
        holder.start()                                          # takes the one request thread
        try:
            assert wait_until(started.exists, timeout=10)
            waiting = threading.Thread(target=lambda: schedserver.Client(server.url, server.token)
                                       .exec.schedules.list_schedules())
            waiting.start()                                     # queued behind it
            wait_until(lambda: "queue" in server.stderr_text(), timeout=3)
        finally:
            flag.touch()
            holder.join(timeout=30)
        waiting.join(timeout=30)
    for entry in json_lines(server.stderr_text()):
        assert_shape(entry)


def test_text_stays_the_default_format(tmp_path, scripts):
    server = ServerProcess(tmp_path / "data", scripts)
    with server, schedserver.Client(server.url, server.token) as client:
        ok = client.exec.schedules.trigger_schedule(script_path="ops/ok.sh")
    lines = server.stderr_text().splitlines()
    assert not any(line.startswith("{") for line in lines)
    assert any("script fire ops/ok.sh trigger=manual status=ok" in line for line in lines), lines
    assert ok["status"] == "ok"


###############################################################################
# JsonFormatter ################################################################
###############################################################################

def record(msg: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    r = logging.LogRecord("schedserver", logging.ERROR, __file__, 1, msg, args, exc_info)
    for name, value in extra.items():
        setattr(r, name, value)
    return r


def test_the_formatter_writes_the_run_fields_only_when_a_record_has_them():
    formatter = schedserver.JsonFormatter()
    plain = json.loads(formatter.format(record("hello %s", "world")))
    assert plain["message"] == "hello world" and set(plain) == {"ts", "level", "logger", "message"}
    run = json.loads(formatter.format(record("x", run_id="r", kind="http", schedule="s", status="ok")))
    assert (run["run_id"], run["kind"], run["schedule"], run["status"]) == ("r", "http", "s", "ok")


def test_the_formatter_keeps_a_traceback_in_one_line_and_unicode_as_it_is():
    formatter = schedserver.JsonFormatter()
    try:
        raise ValueError("bad value")
    except ValueError:
        line = formatter.format(record("failed: %s", "Zürich ✓", exc_info=sys.exc_info()))
    assert "\n" not in line and "Zürich ✓" in line
    entry = json.loads(line)
    assert entry["message"] == "failed: Zürich ✓" and "ValueError: bad value" in entry["exception"]

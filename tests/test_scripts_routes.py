"""Route tests for the script schedule API (/api/v1/exec/schedules) with webtest.

Each test drives the real server (tests/harness.py's Stack) over a temporary data dir and scripts tree, with a fake
clock and a worker pool that runs only when told. Scripts are real files and really run (tiny shell scripts):
triggers run them in the request's thread, cron fires in the reaper's.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import datetime

import pytest

import schedserver
from fakes import FakeClock
from harness import ADMIN, READ, Stack

BASE = "/api/v1/exec/schedules"
READER = READ
MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LIST_FIELDS = {"scriptPath", "scriptRel", "subdomain", "execId", "vmCacheKey", "expression", "timeoutMs",
               "registeredAt", "nextFire", "lastFireAt", "lastFireStatus", "lastFireRunId"}
HOURLY = "# @schedule 0 * * * *\necho hourly\n"
HUGE = "9" * 5000                   # int() refuses strings of over 4,300 digits


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


NOW = at("2026-01-15T11:59:30.250Z")


def waiting_script(release, cron: str = "0 * * * *") -> str:
    """A script that runs until the file `release` exists (at most about 10 s), then prints `released`."""
    return (f"# @schedule {cron}\ni=0\nwhile [ ! -e '{release}' ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); "
            "done\necho released\n")


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


###############################################################################
# The harness ##################################################################
###############################################################################

class Api:
    """One server (a Stack) with helpers that read like the script API."""

    def __init__(self, stack: Stack, opened: list[Stack]):
        self.stack = stack
        self._opened = opened
        opened.append(stack)
        self.root = stack.scripts_dir
        self.data = stack.data_dir

    @property
    def app(self):
        return self.stack.app

    @property
    def clock(self) -> FakeClock:
        return self.stack.clock

    @property
    def scripts(self) -> schedserver.ScriptSchedules:
        return self.stack.scripts

    @property
    def fires(self) -> schedserver.NdjsonLog:
        return self.stack.server.logs["script"]

    def reopen(self) -> Api:
        """A fresh server on the same files, as after a clean restart."""
        return Api(self.stack.reopen(), self._opened)

    def write(self, rel: str, text: str) -> str:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)

    # -- requests -------------------------------------------------------------------------------------------
    def get(self, route: str, headers=ADMIN, **params):
        return self.app.get(BASE + route, params=params, headers=headers, expect_errors=True)

    def post(self, route: str, body=None, headers=ADMIN):
        if body is None:
            return self.app.post(BASE + route, headers=headers, expect_errors=True)
        return self.app.post_json(BASE + route, body, headers=headers, expect_errors=True)

    def post_raw(self, route: str, raw: str, content_type: str = "application/json", headers=ADMIN):
        return self.app.post(BASE + route, raw, headers=headers, content_type=content_type, expect_errors=True)

    def reload(self, **body) -> dict:
        response = self.post("/reload", body)
        assert response.status_int == 200, response.body
        return response.json

    def trigger(self, body, headers=ADMIN):
        return self.post("/trigger", body, headers=headers)

    def history(self, **params):
        return self.get("/history", **params)

    def fires_logged(self) -> list[dict]:
        path = self.data / "fires.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def running(self, rel: str) -> bool:
        return bool(self.stack.recorder.running(schedserver.job_key("script", rel)))


@pytest.fixture
def open_api(tmp_path):
    """Servers over tmp_path (`open_api(**config)`), each closed at the end of the test."""
    opened: list[Stack] = []

    def open_(**config) -> Api:
        return Api(Stack(tmp_path, FakeClock(NOW), **config), opened)

    yield open_
    for stack in opened:
        stack.close()


@pytest.fixture
def server(open_api) -> Api:
    return open_api()


def assert_exec_error(response, status: int, title: str, code: str, *mentions: str) -> dict:
    """An error in this surface's shape: exactly {error: TITLE, code: CODE, message, timestamp}."""
    assert response.status_int == status, response.body
    assert response.content_type == "application/json"
    body = json.loads(response.body)
    assert set(body) == {"error", "code", "message", "timestamp"}, body
    assert (body["error"], body["code"]) == (title, code), body
    assert isinstance(body["message"], str) and body["message"].strip()
    assert MS_UTC.match(body["timestamp"]), body["timestamp"]
    for text in mentions:
        assert text in body["message"], (text, body["message"])
    assert b"Traceback" not in response.body and b"<html" not in response.body.lower()
    return body


def invalid(response, *mentions: str) -> dict:
    return assert_exec_error(response, 400, "Invalid parameter format", "VALIDATION_ERROR", *mentions)


###############################################################################
# GET /list ####################################################################
###############################################################################

def test_the_list_is_empty_before_any_script_is_registered(server):
    response = server.get("/list")
    assert response.status_int == 200
    assert response.json == {"total": 0, "schedules": []}


def test_the_list_shows_every_registration_with_the_contract_fields_sorted_by_script(server):
    cleanup = server.write("default/cron/cleanup.sh", "# @schedule 0 * * * *\n# @description tidy up\necho ok\n")
    server.write("top.sh", "# @schedule @daily\n# @timeout 5s\necho ok\n")
    server.write("billing/report.sh", "# @schedule */2 * * * * *\necho ok\n")
    server.write("notes.txt", "nothing to schedule\n")
    server.reload()

    body = server.get("/list").json

    assert body["total"] == 3
    assert [s["scriptRel"] for s in body["schedules"]] == ["billing/report.sh", "default/cron/cleanup.sh", "top.sh"]
    for item in body["schedules"]:
        assert set(item) == LIST_FIELDS | {"description", "running"}
        for name in ("registeredAt", "nextFire"):
            assert MS_UTC.match(item[name]), item
    assert body["schedules"][1] == {
        "scriptPath": cleanup, "scriptRel": "default/cron/cleanup.sh", "subdomain": "default",
        "execId": "default", "vmCacheKey": "default:default/cron/cleanup.sh", "expression": "0 * * * *",
        "timeoutMs": 30000, "registeredAt": "2026-01-15T11:59:30.250Z", "nextFire": "2026-01-15T12:00:00.000Z",
        "lastFireAt": None, "lastFireStatus": None, "lastFireRunId": None, "description": "tidy up",
        "running": False}
    billing, _, top = body["schedules"]
    assert (billing["subdomain"], billing["execId"], billing["vmCacheKey"]) == \
        ("billing", "billing", "billing:billing/report.sh")
    assert billing["nextFire"] == "2026-01-15T11:59:32.000Z"
    assert (top["subdomain"], top["timeoutMs"], top["description"]) == ("default", 5000, None)
    assert top["nextFire"] == "2026-01-16T00:00:00.000Z"


def test_the_list_shows_the_last_fire_after_a_trigger(server):
    server.write("job.sh", HOURLY)
    server.reload()
    run_id = server.trigger({"scriptPath": "job.sh"}).json["runId"]

    [item] = server.get("/list").json["schedules"]

    assert (item["lastFireAt"], item["lastFireStatus"], item["lastFireRunId"]) == \
        ("2026-01-15T11:59:30.250Z", "ok", run_id)


def test_the_list_shows_a_script_as_running_while_it_runs(server, tmp_path):
    release = tmp_path / "release"
    server.write("job.sh", waiting_script(release, cron="* * * * * *"))
    server.reload()

    server.stack.pass_seconds(1)                    # the 11:59:31 fire starts and waits for `release`
    assert server.running("job.sh")
    [while_running] = server.get("/list").json["schedules"]
    release.touch()
    assert server.stack.wait_idle()
    [after] = server.get("/list").json["schedules"]

    assert while_running["running"] is True
    assert after["running"] is False
    assert (after["lastFireAt"], after["lastFireStatus"]) == ("2026-01-15T11:59:31.000Z", "ok")


def test_registered_at_is_when_a_script_was_first_registered_and_survives_a_restart(server):
    server.write("job.sh", HOURLY)
    server.reload()
    server.clock.advance(3600)
    server.reload()                                 # kept, not registered again

    restarted = server.reopen()
    restarted.write("later.sh", HOURLY)
    restarted.reload()
    listed = {item["scriptRel"]: item["registeredAt"] for item in restarted.get("/list").json["schedules"]}

    assert listed == {"job.sh": "2026-01-15T11:59:30.250Z", "later.sh": "2026-01-15T12:59:30.250Z"}


def test_a_read_only_token_may_list(server):
    assert server.get("/list", headers=READER).status_int == 200


###############################################################################
# GET /history #################################################################
###############################################################################

def log_fires(server: Api, rel: str, count: int) -> list[dict]:
    """`count` fires of `rel`, one a minute from 10:00, appended to the fires log; oldest first."""
    records = []
    for n in range(count):
        record = {"ts": schedserver.utc_iso(at("2026-01-15T10:00:00Z") + 60 * n, ms=True), "scriptPath": rel,
                  "expression": "* * * * *", "runId": str(uuid.uuid4()), "status": "ok", "durationMs": n,
                  "returnPreview": f"run {n}", "trigger": "cron"}
        server.fires.append(record)
        records.append(record)
    return records


def test_history_answers_newest_first_with_100_entries_by_default(server):
    records = log_fires(server, "a.sh", 150)
    body = server.history().json
    assert (body["total"], body["limit"], body["includeRotated"]) == (100, 100, False)
    assert body["entries"] == list(reversed(records))[:100]


def test_history_is_newest_first_by_ts_not_by_when_each_line_was_logged(server):
    """A long run ends (and is logged) after a shorter, later one."""
    def fire(slot: str, logged: str) -> dict:
        record = {"ts": slot, "scriptPath": "a.sh", "expression": "* * * * *", "runId": str(uuid.uuid4()),
                  "status": "ok", "durationMs": 1, "returnPreview": slot, "trigger": "cron", "attempt": 1,
                  "loggedAt": logged}
        server.fires.append(record)
        return record

    oldest = fire("2026-01-15T10:00:00.000Z", "2026-01-15T10:00:01.000Z")
    newest = fire("2026-01-15T10:02:00.000Z", "2026-01-15T10:02:01.000Z")
    middle = fire("2026-01-15T10:01:00.000Z", "2026-01-15T10:03:00.000Z")     # the long one

    assert server.history().json["entries"] == [newest, middle, oldest]
    assert server.history(limit="2").json["entries"] == [newest, middle]
    assert server.history(since="2026-01-15T10:01:00Z").json["entries"] == [newest, middle]
    assert server.history(scriptPath="a.sh", limit="1").json["entries"] == [newest]


def test_history_clamps_a_limit_above_1000(server):
    log_fires(server, "a.sh", 3)
    body = server.history(limit="5000").json
    assert (body["limit"], body["total"], len(body["entries"])) == (1000, 3, 3)


def test_history_honours_a_small_limit(server):
    records = log_fires(server, "a.sh", 10)
    body = server.history(limit="4").json
    assert (body["limit"], body["total"]) == (4, 4)
    assert body["entries"] == list(reversed(records))[:4]


@pytest.mark.parametrize("limit", ["0", "-1", "x", "1.5", ""])
def test_history_refuses_a_limit_that_is_not_a_positive_whole_number(server, limit):
    invalid(server.history(limit=limit), "limit")


@pytest.mark.parametrize("raw, expected", [("true", True), ("false", False), ("1", True), ("0", False)])
def test_history_accepts_include_rotated_as_true_false_1_or_0(server, raw, expected):
    response = server.history(includeRotated=raw)
    assert response.status_int == 200
    assert response.json["includeRotated"] is expected


@pytest.mark.parametrize("raw", ["yes", "", "TRUEISH"])
def test_history_refuses_any_other_include_rotated(server, raw):
    invalid(server.history(includeRotated=raw), "includeRotated")


def test_history_reads_rotated_files_when_asked(open_api):
    server = open_api(fires_log_max_bytes=4096, fires_log_backups=10)
    records = log_fires(server, "a.sh", 40)
    assert (server.data / "fires.log.1").exists()
    current = server.history().json
    everything = server.history(includeRotated="true").json
    assert current["total"] < 40
    assert everything["entries"] == list(reversed(records))
    assert (everything["total"], everything["includeRotated"]) == (40, True)


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01T00:00:00Z", "", "15/01/2026"])
def test_history_refuses_an_unparsable_since(server, since):
    invalid(server.history(since=since), "since")


def test_history_since_is_an_inclusive_lower_bound(server):
    records = log_fires(server, "a.sh", 5)
    body = server.history(since="2026-01-15T10:02:00Z").json
    assert [e["ts"] for e in body["entries"]] == [r["ts"] for r in reversed(records[2:])]
    assert body["total"] == len(body["entries"]) == 3


def test_history_since_accepts_an_offset(server):
    log_fires(server, "a.sh", 5)
    body = server.history(since="2026-01-15T11:03:00+01:00").json
    assert [e["ts"] for e in body["entries"]] == ["2026-01-15T10:04:00.000Z", "2026-01-15T10:03:00.000Z"]


def test_history_filters_by_script_path_relative_or_absolute(server):
    log_fires(server, "a.sh", 2)
    wanted = log_fires(server, "billing/x.sh", 2)
    for path in ("billing/x.sh", str(server.root / "billing" / "x.sh")):
        body = server.history(scriptPath=path).json
        assert body["entries"] == list(reversed(wanted))
        assert body["total"] == 2


@pytest.mark.parametrize("path", ["../x.sh", "/etc/passwd", "a/../../x.sh"])
def test_history_refuses_a_script_path_outside_the_scripts_dir(server, path):
    invalid(server.history(scriptPath=path), "scriptPath")


def test_history_refuses_an_unknown_query_parameter(server):
    invalid(server.history(scriptpath="a.sh"), "scriptpath")


def test_history_total_is_the_number_of_entries_returned(server):
    log_fires(server, "a.sh", 7)
    body = server.history(limit="5").json
    assert body["total"] == len(body["entries"]) == 5


def test_history_lists_a_manual_trigger_with_its_trigger(server):
    server.write("job.sh", HOURLY)
    server.reload()
    run_id = server.trigger({"scriptPath": "job.sh"}).json["runId"]
    [entry] = server.history(scriptPath="job.sh").json["entries"]
    assert (entry["runId"], entry["trigger"], entry["status"], entry["returnPreview"]) == \
        (run_id, "manual", "ok", "hourly")


###############################################################################
# POST /reload #################################################################
###############################################################################

def test_a_reload_without_a_body_applies_the_scan(server):
    server.write("a.sh", HOURLY)
    server.write("moon.sh", "# @schedule every blue moon\necho hi\n")
    response = server.post("/reload")
    assert response.status_int == 200
    body = response.json
    assert (body["dry_run"], body["added"], body["kept"], body["removed"]) == (False, ["a.sh"], [], [])
    assert body["failed"][0]["path"] == "moon.sh"
    assert body["failed"][0]["reason"].startswith("Invalid cron expression: 'every blue moon'")
    assert server.get("/list").json["total"] == 1


def test_a_reload_with_an_empty_object_applies_the_scan(server):
    server.write("a.sh", HOURLY)
    body = server.reload()
    assert (body["dry_run"], body["added"]) == (False, ["a.sh"])


def test_a_dry_run_reload_changes_nothing(server):
    server.write("a.sh", HOURLY)
    body = server.reload(dry_run=True)
    assert (body["dry_run"], body["added"], body["kept"], body["removed"], body["failed"]) == \
        (True, ["a.sh"], [], [], [])
    assert server.get("/list").json == {"total": 0, "schedules": []}


def test_a_reload_answers_changed_and_removed_lists(server):
    server.write("a.sh", HOURLY)
    server.write("b.sh", HOURLY)
    server.reload()
    server.write("a.sh", "# @schedule */5 * * * *\necho hi\n")
    (server.root / "b.sh").unlink()
    body = server.reload()
    assert (body["added"], body["kept"], body["changed"], body["removed"]) == ([], ["a.sh"], ["a.sh"], ["b.sh"])


@pytest.mark.parametrize("field", [f"{HUGE} * * * * *", f"0 0 1-{HUGE} * * *", f"*/{HUGE} * * * * *"],
                         ids=["value", "range-end", "step"])
def test_a_schedule_with_a_5000_digit_number_is_reported_as_an_invalid_cron_expression(server, field):
    server.write("huge.sh", f"# @schedule {field}\necho hi\n")
    server.write("a.sh", HOURLY)

    body = server.reload()

    assert body["added"] == ["a.sh"]
    [failure] = body["failed"]
    assert failure["path"] == "huge.sh"
    assert failure["reason"].startswith("Invalid cron expression"), failure["reason"][:200]


@pytest.mark.parametrize("body", [{"dry_run": "yes"}, {"dry_run": 1}, {"dry_run": None}, [], "dry_run",
                                  {"dryRun": True}])
def test_a_reload_refuses_a_body_that_is_not_an_object_with_a_boolean_dry_run(server, body):
    invalid(server.post("/reload", body))


def test_a_reload_refuses_a_body_that_is_not_json(server):
    invalid(server.post_raw("/reload", "{dry_run: true"))


def test_a_read_only_token_may_not_reload(server):
    assert_exec_error(server.post("/reload", {}, headers=READER), 403, "Access denied", "FORBIDDEN")


###############################################################################
# POST /trigger ################################################################
###############################################################################

def test_a_trigger_runs_the_script_and_answers_its_result(server):
    server.write("default/cron/cleanup.sh", "# @schedule 0 * * * *\necho working\necho '{\"deleted\":12}'\n")
    server.reload()

    response = server.trigger({"scriptPath": "default/cron/cleanup.sh", "force": False})

    assert response.status_int == 200
    body = response.json
    assert set(body) == {"triggered", "scriptPath", "runId", "status", "durationMs", "returnPreview", "exitCode",
                         "attempt"}
    assert (body["triggered"], body["scriptPath"], body["status"]) == (True, "default/cron/cleanup.sh", "ok")
    assert body["returnPreview"] == '{"deleted":12}'
    assert body["exitCode"] == 0
    assert uuid.UUID(body["runId"])
    assert isinstance(body["durationMs"], int) and body["durationMs"] >= 0


def test_a_triggered_fire_is_logged_as_manual_at_the_request_time(server):
    server.write("job.sh", HOURLY)
    server.reload()
    body = server.trigger({"scriptPath": "job.sh"}).json

    [record] = server.fires_logged()

    assert record["trigger"] == "manual"
    assert record["ts"] == "2026-01-15T11:59:30.250Z"
    assert (record["runId"], record["scriptPath"], record["status"], record["returnPreview"]) == \
        (body["runId"], "job.sh", "ok", "hourly")
    assert record["expression"] == "0 * * * *"
    assert (record["attempt"], record["exitCode"]) == (1, 0)
    assert record["startedAt"] == record["loggedAt"] == "2026-01-15T11:59:30.250Z"
    assert "signal" not in record


def test_a_trigger_accepts_an_absolute_path_inside_the_scripts_dir(server):
    path = server.write("billing/job.sh", HOURLY)
    server.reload()
    response = server.trigger({"scriptPath": path})
    assert response.status_int == 200
    assert response.json["scriptPath"] == "billing/job.sh"


def test_a_failing_triggered_script_answers_its_error_and_exit_code(server):
    server.write("fails.sh", "# @schedule 0 * * * *\necho 'TypeError: cannot read property' >&2\nexit 3\n")
    server.reload()
    body = server.trigger({"scriptPath": "fails.sh"}).json
    assert (body["status"], body["error"], body["exitCode"]) == ("error", "TypeError: cannot read property", 3)
    assert "returnPreview" not in body
    assert "signal" not in body


def test_a_triggered_script_killed_by_a_signal_answers_the_signal(server):
    server.write("killed.sh", "# @schedule 0 * * * *\nkill -KILL $$\n")
    server.reload()
    body = server.trigger({"scriptPath": "killed.sh"}).json
    assert body["status"] == "error"
    assert body["signal"] == "SIGKILL"
    [record] = server.fires_logged()
    assert record["signal"] == "SIGKILL"


def test_a_trigger_without_a_script_path_is_refused(server):
    invalid(server.trigger({"force": True}), "scriptPath")


def test_a_trigger_without_a_body_is_refused(server):
    invalid(server.post("/trigger"))


@pytest.mark.parametrize("path", ["../x.sh", "a/../../x.sh", "/etc/passwd", ""])
def test_a_trigger_outside_the_scripts_dir_is_refused(server, path):
    invalid(server.trigger({"scriptPath": path}), "scriptPath")


def test_a_trigger_with_a_script_path_that_is_not_a_string_is_refused(server):
    invalid(server.trigger({"scriptPath": 42}), "scriptPath")


def test_a_trigger_with_a_force_that_is_not_a_boolean_is_refused(server):
    server.write("job.sh", HOURLY)
    server.reload()
    invalid(server.trigger({"scriptPath": "job.sh", "force": "yes"}), "force")


def test_a_trigger_of_an_unregistered_script_is_not_found(server):
    server.write("plain.sh", "echo no schedule here\n")
    server.reload()
    for path in ("plain.sh", "missing.sh"):
        assert_exec_error(server.trigger({"scriptPath": path}), 404, "Resource not found", "NOT_FOUND", path)


def test_a_token_script_is_refused_without_force(server):
    server.write("secure.sh", "# @schedule 0 * * * *\n# @token\necho secured\n")
    server.reload()
    assert_exec_error(server.trigger({"scriptPath": "secure.sh"}), 403, "Access denied", "FORBIDDEN", "force")
    assert_exec_error(server.trigger({"scriptPath": "secure.sh", "force": False}), 403, "Access denied", "FORBIDDEN")
    assert server.fires_logged() == []


def test_a_token_script_runs_when_forced(server):
    server.write("secure.sh", "# @schedule 0 * * * *\n# @token\necho secured\n")
    server.reload()
    response = server.trigger({"scriptPath": "secure.sh", "force": True})
    assert response.status_int == 200
    assert (response.json["status"], response.json["returnPreview"]) == ("ok", "secured")


def test_a_trigger_of_a_running_script_is_a_conflict(server, tmp_path):
    release = tmp_path / "release"
    server.write("job.sh", waiting_script(release, cron="* * * * * *"))
    server.reload()
    server.stack.pass_seconds(1)                    # a cron fire starts and waits for `release`
    assert server.running("job.sh")

    response = server.trigger({"scriptPath": "job.sh"})
    logged_meanwhile = server.fires_logged()
    release.touch()
    assert server.stack.wait_idle()

    body = assert_exec_error(response, 409, "Conflict", "CONFLICT")
    assert "running" in body["message"]
    assert logged_meanwhile == []
    assert [record["trigger"] for record in server.fires_logged()] == ["cron"]


@pytest.mark.parametrize("threads, limit", [(1, 1), (2, 1), (4, 2)])
def test_a_trigger_beyond_the_manual_triggers_that_may_wait_at_once_answers_503_at_once(open_api, tmp_path,
                                                                                         threads, limit):
    """A trigger holds a request thread until its script ends: at most max(1, threads // 2) of them at once."""
    server = open_api(threads=threads)
    release = tmp_path / "release"
    for n in range(limit):
        server.write(f"slow{n}.sh", waiting_script(release))
    server.write("job.sh", HOURLY)
    server.reload()
    answers: dict[int, object] = {}

    def trigger(n: int) -> None:
        answers[n] = server.trigger({"scriptPath": f"slow{n}.sh"})

    waiting = [threading.Thread(target=trigger, args=(n,), daemon=True) for n in range(limit)]
    try:
        for thread in waiting:
            thread.start()
        assert wait_for(lambda: all(server.running(f"slow{n}.sh") for n in range(limit)))

        refused = server.trigger({"scriptPath": "job.sh"})
    finally:
        release.touch()
        for thread in waiting:
            thread.join(15)

    assert_exec_error(refused, 503, "Service unavailable", "ERROR_503")
    assert [answers[n].json["status"] for n in range(limit)] == ["ok"] * limit
    assert server.trigger({"scriptPath": "job.sh"}).json["status"] == "ok"       # free again
    assert "job.sh" not in [record["scriptPath"] for record in server.fires_logged()[:-1]]


def test_a_read_only_token_may_not_trigger(server):
    server.write("job.sh", HOURLY)
    server.reload()
    assert_exec_error(server.trigger({"scriptPath": "job.sh"}, headers=READER), 403, "Access denied", "FORBIDDEN")
    assert server.fires_logged() == []


def test_a_trigger_refuses_an_unknown_field(server):
    server.write("job.sh", HOURLY)
    server.reload()
    invalid(server.trigger({"scriptPath": "job.sh", "forced": True}), "forced")


def test_a_script_whose_name_is_not_utf8_does_not_break_reload_or_list(server):
    with open(bytes(server.root) + b"/caf\xe9.sh", "w") as f:
        f.write(HOURLY)
    server.write("ok.sh", HOURLY)

    reload = server.post("/reload", {})
    listing = server.get("/list")

    assert reload.status_int == 200, reload.body
    assert reload.content_type == "application/json"
    assert listing.status_int == 200, listing.body
    assert "ok.sh" in [s["scriptRel"] for s in listing.json["schedules"]]


###############################################################################
# Unknown query parameters #####################################################
###############################################################################

def test_the_list_refuses_an_unknown_query_parameter(server):
    invalid(server.get("/list", verbose="1"), "verbose")
    invalid(server.get("/list", headers=READER, limit="5"), "limit")


def test_a_reload_with_dry_run_in_the_query_is_refused_and_applies_nothing(server):
    server.write("a.sh", HOURLY)

    response = server.app.post(BASE + "/reload?dry_run=true", headers=ADMIN, expect_errors=True)

    invalid(response, "dry_run")
    assert server.get("/list").json == {"total": 0, "schedules": []}
    assert server.stack.scheduler.get(schedserver.job_key("script", "a.sh")) is None


def test_a_reload_refuses_an_unknown_query_parameter_even_with_a_valid_body(server):
    server.write("a.sh", HOURLY)

    response = server.app.post_json(BASE + "/reload?verbose=1", {"dry_run": False}, headers=ADMIN,
                                    expect_errors=True)

    invalid(response, "verbose")
    assert server.get("/list").json["total"] == 0


def test_a_trigger_refuses_an_unknown_query_parameter_and_runs_nothing(server):
    server.write("secure.sh", "# @schedule 0 * * * *\n# @token\necho secured\n")
    server.reload()

    response = server.app.post_json(BASE + "/trigger?force=true", {"scriptPath": "secure.sh"}, headers=ADMIN,
                                    expect_errors=True)

    invalid(response, "force")
    assert server.fires_logged() == []


###############################################################################
# Errors, auth and routing #####################################################
###############################################################################

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic admin"}])
def test_a_request_without_a_valid_token_is_unauthorized(server, headers):
    response = server.get("/list", headers=headers)
    assert_exec_error(response, 401, "Unauthorized", "UNAUTHORIZED")
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_every_route_requires_a_token(server):
    for response in (server.get("/history", headers={}), server.post("/reload", {}, headers={}),
                     server.trigger({"scriptPath": "a.sh"}, headers={})):
        assert_exec_error(response, 401, "Unauthorized", "UNAUTHORIZED")


def test_an_unknown_route_under_the_surface_is_not_found_in_its_shape(server):
    for route in ("/nope", "/list/extra", "/"):
        assert_exec_error(server.get(route), 404, "Resource not found", "NOT_FOUND")


@pytest.mark.parametrize("path", ["/api/v1/exec", "/api/v1/exec/", "/api/v1/exec/nope", "/api/v1/exec/schedule",
                                  "/api/v1/exec/schedule/list", "/api/v1/exec/schedules",
                                  "/api/v1/exec/schedules/trigger/extra", "/api/v1/exec/v2/schedules/list"])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_an_unknown_route_under_api_v1_exec_is_not_found_in_the_exec_shape(server, method, path):
    response = server.app.request(path, method=method, headers=ADMIN, expect_errors=True)

    assert_exec_error(response, 404, "Resource not found", "NOT_FOUND")


def test_a_path_that_only_starts_like_the_exec_surface_keeps_the_plain_shape(server):
    response = server.app.get("/api/v1/executor", headers=ADMIN, expect_errors=True)

    assert response.status_int == 404
    assert response.json == {"error": "NOT_FOUND", "message": "No such route"}


@pytest.mark.parametrize("method, route", [("GET", "/trigger"), ("GET", "/reload"), ("POST", "/list"),
                                           ("DELETE", "/history"), ("PUT", "/trigger")])
def test_a_wrong_method_is_answered_with_a_json_405(server, method, route):
    response = server.app.request(BASE + route, method=method, headers=ADMIN, expect_errors=True)
    assert response.status_int == 405
    assert response.content_type == "application/json"
    body = json.loads(response.body)
    assert set(body) == {"error", "code", "message", "timestamp"}
    assert body["code"] == "METHOD_NOT_ALLOWED"
    assert method in body["message"]
    assert MS_UTC.match(body["timestamp"])


def test_a_body_that_is_not_json_content_is_refused(server):
    response = server.post_raw("/trigger", "scriptPath=a.sh", content_type="application/x-www-form-urlencoded")
    assert response.status_int == 400
    body = json.loads(response.body)
    assert set(body) == {"error", "code", "message", "timestamp"}
    assert (body["error"], body["code"]) == ("Invalid parameter format", "VALIDATION_ERROR")


def test_the_http_schedule_surface_keeps_its_own_error_shape(server):
    response = server.app.get("/api/v1/curl/schedule/nope", headers=ADMIN, expect_errors=True)
    assert response.status_int == 404
    assert set(response.json) == {"error", "message"}


def test_an_unexpected_failure_is_a_500_in_the_surface_shape_without_details(server, monkeypatch):
    def explode():
        raise RuntimeError("secret-internal-detail")

    monkeypatch.setattr(server.scripts, "list", explode)
    response = server.get("/list")
    body = assert_exec_error(response, 500, "Internal server error", "ERROR_500")
    assert "secret-internal-detail" not in response.text
    assert body["message"] == "Internal server error"

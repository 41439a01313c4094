"""Operating HTTP request schedules (issue 16, items 1-7): edit (PATCH /{id}), run now (POST /{id}/run), the run
history (GET /{id}/runs and /{id}/runs/{run_id}), retries, the success rule, the overlap policy and jitter.

Route and policy tests drive the real server in process (tests/harness.py's Stack: the real services, recorder,
run state and storage over a temporary data dir, a fake clock, a worker pool that runs only when told and a
scripted HTTP runner), so nothing sleeps to test logic. Tests of what a run keeps of an answer, and of the success
rule on real answers, use the real HttpRunner against loopback peers. One end-to-end test runs the real server
process against a loopback target that fails N times, then succeeds. Every wait has a deadline.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import webtest

import schedserver
from e2e_helpers import CURL_PATH, ServerProcess, TargetServer, wait_until
from fakes import FakeClock, instant
from harness import ADMIN, READ, Stack
from peers import RawPeer, read_request_head

BASE = "/api/v1/curl/schedule"
NOW = "2025-01-10T12:00:00Z"            # a Friday; the Stack's clock starts here
DAY = "2025-01-10T"
DAILY_AT_1201 = "0 1 12 * * *"          # 2025-01-10T12:01:00Z, then a day later
EVERY_SECOND = "* * * * * *"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RUN_KEYS = {"run_id", "schedule_id", "trigger", "attempt", "scheduled_at", "started_at", "finished_at", "status",
            "status_code", "duration_ms", "error"}
DEFAULT_RETRY = {"count": 0, "min_backoff_seconds": 5, "max_backoff_seconds": 300, "max_doublings": 5}
OK = ("ok", 200, None)
HTTP_500 = ("error", 500, "HTTP 500 Internal Server Error")
TIMED_OUT = ("timeout", None, "timed out after 30 s")


def at(hms: str) -> float:
    """An instant of the test day, e.g. at("12:01:10")."""
    return instant(DAY + hms + "Z")


def ms(hms: str) -> str:
    """How a run object shows an instant of the test day: ISO 8601 with milliseconds."""
    return DAY + hms + ".000Z"


###############################################################################
# The harness ##################################################################
###############################################################################

class Api:
    """One in-process server (a Stack) with helpers that read like the API."""

    def __init__(self, stack: Stack, opened: list[Stack]):
        self.stack = stack
        self._opened = opened
        opened.append(stack)

    @property
    def app(self) -> webtest.TestApp:
        return self.stack.app

    @property
    def clock(self) -> FakeClock:
        return self.stack.clock

    @property
    def runner(self):
        """The HTTP runner: scripted (`.runs`, `.script`, `.hold`, `.release()`) unless a real one was given."""
        return self.stack.http_runner

    @property
    def runs_service(self) -> schedserver.Runs:
        return self.stack.server.runs

    # -- life cycle -----------------------------------------------------------------------------------------
    def reopen(self, **config) -> "Api":
        """A fresh server on the same files, as after a clean restart."""
        return Api(self.stack.reopen(**config), self._opened)

    def crash_and_reopen(self) -> "Api":
        """A fresh server on the same files after a SIGKILL-like end: nothing saved."""
        self.stack.crash()
        return Api(self.stack.reopen(), self._opened)

    # -- requests -------------------------------------------------------------------------------------------
    def create(self, cron: str = "0 0 9 * * *", url: str = "https://api.example.com/hook", **fields) -> dict:
        request = {"url": url, **fields.pop("request", {})}
        response = self.app.post_json(BASE, {"cron": cron, "request": request, **fields}, headers=ADMIN,
                                      expect_errors=True)
        assert response.status_int == 201, response.body
        return response.json

    def post_create(self, body: Any):
        return self.app.post_json(BASE, body, headers=ADMIN, expect_errors=True)

    def get(self, schedule_id: str) -> dict:
        response = self.app.get(f"{BASE}/{schedule_id}", headers=ADMIN, expect_errors=True)
        assert response.status_int == 200, response.body
        return response.json

    def patch(self, schedule_id: str, body: Any = None, headers=ADMIN, raw: bytes | None = None,
              content_type: str = "application/json"):
        url = f"{BASE}/{schedule_id}"
        if raw is not None or body is None:
            return self.app.patch(url, raw or b"", headers=headers, content_type=content_type, expect_errors=True)
        return self.app.patch_json(url, body, headers=headers, expect_errors=True)

    def run(self, schedule_id: str, query: str = "", headers=ADMIN, body: bytes | None = None):
        url = f"{BASE}/{schedule_id}/run{query}"
        if body is not None:
            return self.app.post(url, body, headers=headers, content_type="application/json", expect_errors=True)
        return self.app.post(url, headers=headers, expect_errors=True)

    def run_ok(self, schedule_id: str) -> dict:
        response = self.run(schedule_id)
        assert response.status_int == 200, response.body
        return response.json

    def runs(self, schedule_id: str, query: str = "", headers=ADMIN):
        return self.app.get(f"{BASE}/{schedule_id}/runs{query}", headers=headers, expect_errors=True)

    def run_of(self, schedule_id: str, run_id: str, headers=ADMIN):
        return self.app.get(f"{BASE}/{schedule_id}/runs/{run_id}", headers=headers, expect_errors=True)

    def all_runs(self, schedule_id: str) -> list[dict]:
        """Every run of the schedule, newest first (one page of up to 1000)."""
        response = self.runs(schedule_id, "?limit=1000")
        assert response.status_int == 200, response.body
        return response.json["items"]

    def oldest_first(self, schedule_id: str) -> list[dict]:
        return list(reversed(self.all_runs(schedule_id)))

    # -- time -----------------------------------------------------------------------------------------------
    def run_due(self) -> int:
        return self.stack.run_due()

    def pass_seconds(self, seconds: int) -> None:
        self.stack.pass_seconds(seconds)

    def go_to(self, hms: str) -> None:
        """Set the clock to that instant of the test day and tick once (no ticks in between)."""
        self.clock.set(at(hms))
        self.stack.run_due()

    def pass_until(self, hms: str) -> None:
        """Tick every second up to that instant of the test day."""
        self.pass_seconds(int(at(hms) - self.clock()))


@pytest.fixture
def open_api(tmp_path):
    """Servers over tmp_path (`open_api(**stack_args)`), each closed at the end of the test."""
    opened: list[Stack] = []

    def open_(**stack_args) -> Api:
        clock = stack_args.pop("clock", None) or FakeClock(NOW)
        return Api(Stack(tmp_path, clock, **stack_args), opened)

    yield open_
    for stack in opened:
        runner = stack.http_runner
        if getattr(runner, "hold", False):
            runner.hold = False
        stack.close()


@pytest.fixture
def api(open_api) -> Api:
    return open_api()


@pytest.fixture
def real_api(open_api):
    """A server whose HTTP runs are real (schedserver.HttpRunner), to loopback peers."""
    watcher = schedserver.DeadlineWatcher()
    clock = FakeClock(NOW)
    runner = schedserver.HttpRunner(deadlines=watcher, clock=clock)
    yield open_api(clock=clock, http_runner=runner)
    runner.close()
    watcher.close()


def assert_error(response, status: int, code: str, *mentions: str) -> None:
    """A JSON error in the HTTP surface's shape: exactly {"error": CODE, "message": text}."""
    assert response.status_int == status, response.body
    assert response.content_type == "application/json"
    body = json.loads(response.body)
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"].strip()
    for text in mentions:
        assert text in body["message"], (text, body["message"])
    assert b"Traceback" not in response.body


def answering(status: str, body: bytes = b"", headers: tuple[tuple[str, str], ...] = ()):
    """A RawPeer behaviour: read one request, answer `HTTP/1.1 <status>` with `headers` and `body`, close."""
    def behave(conn: socket.socket, stopping: threading.Event) -> None:
        read_request_head(conn)
        head = f"HTTP/1.1 {status}\r\n"
        for name, value in headers:
            head += f"{name}: {value}\r\n"
        head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        conn.sendall(head.encode("latin-1") + body)
    return behave


###############################################################################
# Edit: PATCH /api/v1/curl/schedule/{id} ######################################
###############################################################################

# (field, value sent, how GET /{id} shows it afterwards)
EDITS = [
    ("cron", "*/5 * * * *", "*/5 * * * *"),
    ("cron", "@hourly", "@hourly"),
    ("name", "nightly report", "nightly report"),
    ("name", None, None),
    ("timezone", "Europe/Berlin", "Europe/Berlin"),
    ("enabled", False, False),
    ("request", {"url": "https://other.example.com/x?y=1", "method": "post", "headers": {"X-Key": "v"},
                 "json": {"a": [1, 2]}, "timeout": 5, "follow_redirects": True},
     {"url": "https://other.example.com/x?y=1", "method": "POST", "headers": {"X-Key": "v"}, "json": {"a": [1, 2]},
      "timeout": 5, "follow_redirects": True}),
    ("retry", {"count": 3}, {"count": 3, "min_backoff_seconds": 5, "max_backoff_seconds": 300, "max_doublings": 5}),
    ("retry", {"count": 2, "min_backoff_seconds": 0.5, "max_backoff_seconds": 60, "max_doublings": 0},
     {"count": 2, "min_backoff_seconds": 0.5, "max_backoff_seconds": 60, "max_doublings": 0}),
    ("success", {"status": ["2xx", 304], "body_contains": "ok"}, {"status": ["2xx", 304], "body_contains": "ok"}),
    ("success", {"body_contains": "healthy"}, {"body_contains": "healthy"}),
    ("overlap", "allow", "allow"),
    ("overlap", "replace", "replace"),
    ("jitter_seconds", 30, 30),
    ("jitter_seconds", 2.5, 2.5),
    ("notify", {"url": "https://hooks.example.com/x"},
     {"url": "https://hooks.example.com/x", "on": ["failure", "recovery"], "after": 1}),
    ("notify", {"url": "https://hooks.example.com/y", "on": ["success"], "after": 3},
     {"url": "https://hooks.example.com/y", "on": ["success"], "after": 3}),
]

# (field, bad value, the code create and edit both answer)
BAD_FIELDS = [
    ("cron", "every blue moon", "INVALID_CRON_EXPRESSION"),
    ("cron", "0 0 0 30 2 *", "INVALID_CRON_EXPRESSION"),
    ("cron", "61 * * * * *", "INVALID_CRON_EXPRESSION"),
    ("cron", 5, "INVALID_PARAMETER"),
    ("request", "https://api.example.com/", "INVALID_PARAMETER"),
    ("request", {"url": "ftp://api.example.com/"}, "INVALID_PARAMETER"),
    ("request", {"method": "GET"}, "INVALID_PARAMETER"),
    ("request", {"url": "https://api.example.com/", "method": "FETCH"}, "INVALID_PARAMETER"),
    ("request", {"url": "https://api.example.com/", "timeout": 301}, "INVALID_PARAMETER"),
    ("request", {"url": "https://api.example.com/", "body": "x", "json": {}}, "INVALID_PARAMETER"),
    ("request", {"url": "https://api.example.com/", "extra": 1}, "INVALID_PARAMETER"),
    ("name", 5, "INVALID_PARAMETER"),
    ("name", "x" * 201, "INVALID_PARAMETER"),
    ("enabled", "yes", "INVALID_PARAMETER"),
    ("timezone", "Mars/Olympus_Mons", "INVALID_PARAMETER"),
    ("timezone", "right/UTC", "INVALID_PARAMETER"),
    ("retry", 3, "INVALID_PARAMETER"),
    ("retry", {"count": 6}, "INVALID_PARAMETER"),
    ("retry", {"count": -1}, "INVALID_PARAMETER"),
    ("retry", {"count": True}, "INVALID_PARAMETER"),
    ("retry", {"count": 1.5}, "INVALID_PARAMETER"),
    ("retry", {"count": 1, "min_backoff_seconds": 0}, "INVALID_PARAMETER"),
    ("retry", {"count": 1, "min_backoff_seconds": 3601}, "INVALID_PARAMETER"),
    ("retry", {"count": 1, "max_backoff_seconds": 86401}, "INVALID_PARAMETER"),
    ("retry", {"count": 1, "min_backoff_seconds": 10, "max_backoff_seconds": 5}, "INVALID_PARAMETER"),
    ("retry", {"count": 1, "max_doublings": 17}, "INVALID_PARAMETER"),
    ("retry", {"count": 1, "tries": 3}, "INVALID_PARAMETER"),
    ("success", [200], "INVALID_PARAMETER"),
    ("success", {"status": []}, "INVALID_PARAMETER"),
    ("success", {"status": "2xx"}, "INVALID_PARAMETER"),
    ("success", {"status": ["6xx"]}, "INVALID_PARAMETER"),
    ("success", {"status": [99]}, "INVALID_PARAMETER"),
    ("success", {"status": [True]}, "INVALID_PARAMETER"),
    ("success", {"body_contains": ""}, "INVALID_PARAMETER"),
    ("success", {"body_contains": 5}, "INVALID_PARAMETER"),
    ("success", {"codes": [200]}, "INVALID_PARAMETER"),
    ("overlap", "queue", "INVALID_PARAMETER"),
    ("overlap", None, "INVALID_PARAMETER"),
    ("jitter_seconds", -1, "INVALID_PARAMETER"),
    ("jitter_seconds", 3601, "INVALID_PARAMETER"),
    ("jitter_seconds", "5", "INVALID_PARAMETER"),
    ("jitter_seconds", True, "INVALID_PARAMETER"),
    ("notify", "https://hooks.example.com/x", "INVALID_PARAMETER"),
    ("notify", {"url": "ftp://hooks.example.com/x"}, "INVALID_PARAMETER"),
    ("notify", {"on": ["failure"]}, "INVALID_PARAMETER"),
    ("notify", {"url": "https://hooks.example.com/x", "on": ["panic"]}, "INVALID_PARAMETER"),
    ("notify", {"url": "https://hooks.example.com/x", "on": []}, "INVALID_PARAMETER"),
    ("notify", {"url": "https://hooks.example.com/x", "after": 0}, "INVALID_PARAMETER"),
    ("notify", {"url": "https://hooks.example.com/x", "secret": "s"}, "INVALID_PARAMETER"),
]


def _edit_id(param) -> str:
    return str(param)[:40]


class TestEdit:
    @pytest.mark.parametrize("field,value,shown", EDITS, ids=_edit_id)
    def test_each_field_can_be_changed_alone_and_the_answer_is_the_whole_schedule_as_get_shows_it(
            self, api, field, value, shown):
        created = api.create(name="report", request={"headers": {"X-Old": "1"}, "body": "old"})
        before = api.get(created["id"])

        response = api.patch(created["id"], {field: value})

        assert response.status_int == 200, response.body
        after = api.get(created["id"])
        assert response.json == after
        assert after[field] == shown
        unchanged = {k for k in before if k not in (field, "next_run")}
        if field == "request":
            unchanged.discard("request")
        assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}

    def test_request_replaces_the_whole_request_object(self, api):
        created = api.create(request={"method": "POST", "headers": {"X-Old": "1"}, "body": "old", "timeout": 9,
                                      "follow_redirects": True})

        answer = api.patch(created["id"], {"request": {"url": "https://new.example.com/"}}).json

        assert answer["request"] == {"url": "https://new.example.com/", "method": "GET", "headers": {},
                                     "timeout": 30, "follow_redirects": False}

    def test_several_fields_change_together(self, api):
        created = api.create()

        answer = api.patch(created["id"], {"cron": "0 30 12 * * *", "name": "n", "overlap": "allow",
                                           "retry": {"count": 1}, "jitter_seconds": 1}).json

        assert (answer["cron"], answer["name"], answer["overlap"], answer["retry"]["count"],
                answer["jitter_seconds"]) == ("0 30 12 * * *", "n", "allow", 1, 1)
        assert answer["next_run"] == "2025-01-10T12:30:00Z"

    @pytest.mark.parametrize("field,value,code", BAD_FIELDS, ids=_edit_id)
    def test_a_bad_value_is_refused_with_the_same_code_as_create_and_changes_nothing(self, api, field, value, code):
        created = api.create()
        before = api.get(created["id"])
        at_create = api.post_create({"cron": "0 0 9 * * *", "request": {"url": "https://api.example.com/hook"},
                                     field: value})

        response = api.patch(created["id"], {field: value})

        assert_error(at_create, 400, code)
        assert_error(response, 400, code)
        assert api.get(created["id"]) == before

    def test_a_body_with_one_bad_field_among_good_ones_changes_nothing(self, api):
        created = api.create()
        before = api.get(created["id"])

        response = api.patch(created["id"], {"name": "changed", "cron": "0 30 12 * * *", "overlap": "sometimes"})

        assert_error(response, 400, "INVALID_PARAMETER", "overlap")
        assert api.get(created["id"]) == before

    @pytest.mark.parametrize("field", ["id", "created_at", "last_run", "next_run", "history", "Cron", "unknown"])
    def test_an_unknown_field_is_400_invalid_parameter_naming_it(self, api, field):
        created = api.create()
        before = api.get(created["id"])

        response = api.patch(created["id"], {field: "x"})

        assert_error(response, 400, "INVALID_PARAMETER", field)
        assert api.get(created["id"]) == before

    @pytest.mark.parametrize("raw", [b"", b"   ", b"{}", b"null", b"[]", b"\"name\"", b"{\"name\": ", b"\xff"],
                             ids=repr)
    def test_an_empty_or_non_object_body_is_400_invalid_parameter(self, api, raw):
        created = api.create()
        before = api.get(created["id"])

        assert_error(api.patch(created["id"], raw=raw), 400, "INVALID_PARAMETER")
        assert api.get(created["id"]) == before

    def test_a_body_that_is_not_sent_as_json_is_400(self, api):
        created = api.create()

        assert_error(api.patch(created["id"], raw=b'{"name": "x"}', content_type="text/plain"), 400,
                     "INVALID_PARAMETER")

    def test_a_body_over_1_mib_is_413(self, api):
        created = api.create()
        raw = json.dumps({"name": "x" * (1024 * 1024)}).encode()

        assert_error(api.patch(created["id"], raw=raw), 413, "PAYLOAD_TOO_LARGE")

    @pytest.mark.parametrize("schedule_id", [str(uuid.uuid4()), "not-an-id", "0"])
    @pytest.mark.parametrize("raw", [b'{"name": "fine"}', b"", b"not json", b'{"bogus": 1}'], ids=repr)
    def test_an_unknown_schedule_is_404_schedule_not_found_whatever_the_body(self, api, schedule_id, raw):
        api.create()

        assert_error(api.patch(schedule_id, raw=raw), 404, "SCHEDULE_NOT_FOUND")

    def test_a_read_only_token_is_403_and_no_token_is_401(self, api):
        created = api.create()

        assert_error(api.patch(created["id"], {"name": "x"}, headers=READ), 403, "FORBIDDEN")
        response = api.patch(created["id"], {"name": "x"}, headers={})
        assert_error(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert api.get(created["id"])["name"] is None

    def test_an_unknown_query_parameter_is_400(self, api):
        created = api.create()

        response = api.app.patch_json(f"{BASE}/{created['id']}?force=1", {"name": "x"}, headers=ADMIN,
                                      expect_errors=True)

        assert_error(response, 400, "INVALID_PARAMETER", "force")

    def test_the_id_created_at_last_run_and_history_are_kept(self, api):
        created = api.create(cron=EVERY_SECOND)
        api.pass_seconds(3)
        before = api.get(created["id"])
        assert len(before["history"]) == 3

        api.clock.advance(0.5)
        after = api.patch(created["id"], {"cron": "0 0 9 * * *", "name": "renamed",
                                          "request": {"url": "https://new.example.com/"}}).json

        for name in ("id", "created_at", "last_run", "last_status", "history"):
            assert after[name] == before[name], name
        assert [r["run_id"] for r in api.all_runs(created["id"])] == [h["run_id"] for h in before["history"]]

    def test_next_run_is_worked_out_again_from_now(self, api):
        created = api.create(cron="0 0 9 * * *")
        assert created["next_run"] == "2025-01-11T09:00:00Z"

        assert api.patch(created["id"], {"cron": "0 30 12 * * *"}).json["next_run"] == "2025-01-10T12:30:00Z"
        assert api.patch(created["id"], {"timezone": "America/New_York", "cron": "0 0 9 * * *"}).json[
            "next_run"] == "2025-01-10T14:00:00Z"        # 09:00 in New York is 14:00 UTC; it is 07:00 there now
        api.clock.set(at("14:00:05"))
        assert api.patch(created["id"], {"name": "later"}).json["next_run"] == "2025-01-11T14:00:00Z"

    def test_an_edited_cron_fires_on_its_new_slots_only(self, api):
        created = api.create(cron="0 0 9 * * *")
        api.patch(created["id"], {"cron": "*/10 * * * * *"})

        api.pass_seconds(25)

        assert [r["scheduled_at"] for r in api.oldest_first(created["id"])] == [ms("12:00:10"), ms("12:00:20")]

    def test_an_edited_request_is_what_the_next_run_sends(self, api):
        created = api.create(cron=EVERY_SECOND, url="https://old.example.com/")
        api.pass_seconds(1)

        api.patch(created["id"], {"request": {"url": "https://new.example.com/", "method": "DELETE"}})
        api.pass_seconds(1)

        sent = [(request["url"], request["method"]) for request, _ in api.runner.calls]
        assert sent == [("https://old.example.com/", "GET"), ("https://new.example.com/", "DELETE")]

    def test_enabled_false_stops_the_runs_and_enabled_true_resumes_from_now_without_catch_up(self, api):
        created = api.create(cron=EVERY_SECOND)
        api.pass_seconds(2)

        off = api.patch(created["id"], {"enabled": False}).json
        api.pass_seconds(5)

        assert (off["enabled"], off["next_run"]) == (False, None)
        assert len(api.runner.runs) == 2
        assert api.app.get(BASE, headers=ADMIN).json["items"][0]["enabled"] is False

        api.clock.advance(100.25)
        on = api.patch(created["id"], {"enabled": True}).json
        assert (on["enabled"], on["next_run"]) == (True, "2025-01-10T12:01:48Z")
        api.pass_seconds(2)
        statuses = [r["status"] for r in api.all_runs(created["id"])]
        assert statuses == ["ok"] * 4           # no missed record for the slots while it was off

    def test_a_disabled_schedule_can_be_edited_and_stays_disabled(self, api):
        created = api.create(cron=EVERY_SECOND, enabled=False)

        answer = api.patch(created["id"], {"cron": "*/2 * * * * *", "name": "x"}).json
        api.pass_seconds(4)

        assert (answer["enabled"], answer["next_run"]) == (False, None)
        assert api.runner.runs == []

    @pytest.mark.parametrize("restart", ["clean", "crash"])
    def test_an_acknowledged_edit_survives_a_restart(self, api, restart):
        created = api.create(cron=EVERY_SECOND)
        answer = api.patch(created["id"], {
            "cron": "0 0 9 * * MON-FRI", "name": "kept", "timezone": "Europe/Berlin",
            "request": {"url": "https://kept.example.com/", "method": "PUT", "body": "b"},
            "retry": {"count": 2, "min_backoff_seconds": 1}, "success": {"status": [200, "3xx"]},
            "overlap": "replace", "jitter_seconds": 12.5,
            "notify": {"url": "https://hooks.example.com/k", "on": ["failure"], "after": 2}}).json

        reopened = api.reopen() if restart == "clean" else api.crash_and_reopen()

        assert reopened.get(created["id"]) == answer
        answer = reopened.patch(created["id"], {"enabled": False, "overlap": "forbid", "jitter_seconds": 0,
                                                "retry": None, "success": None, "notify": None}).json
        again = reopened.reopen() if restart == "clean" else reopened.crash_and_reopen()
        shown = again.get(created["id"])
        assert shown == answer
        assert (shown["enabled"], shown["overlap"], shown["jitter_seconds"], shown["retry"], shown["success"],
                shown["notify"]) == (False, "forbid", 0, DEFAULT_RETRY, None, None)

    def test_a_storage_failure_is_500_storage_error_and_changes_nothing(self, api):
        created = api.create(cron=EVERY_SECOND)
        before = api.get(created["id"])
        next_at = api.stack.scheduler.next_at("http:" + created["id"])

        def failing_append(line: bytes) -> None:
            raise OSError(28, "No space left on device: /secret/path")

        api.stack.http.store._append = failing_append
        try:
            response = api.patch(created["id"], {"cron": "0 0 9 * * *", "enabled": False})
        finally:
            del api.stack.http.store._append

        assert_error(response, 500, "STORAGE_ERROR")
        assert b"/secret/path" not in response.body
        assert api.get(created["id"]) == before
        assert api.stack.scheduler.next_at("http:" + created["id"]) == next_at
        api.pass_seconds(1)
        assert len(api.runner.runs) == 1            # still firing every second

    def test_a_literal_address_the_egress_policy_refuses_is_400_in_request_and_notify(self, open_api):
        api = open_api(deny_networks=("10.0.0.0/8",))
        created = api.create()

        assert_error(api.patch(created["id"], {"request": {"url": "http://10.1.2.3/x"}}), 400, "INVALID_PARAMETER",
                     "10.1.2.3")
        assert_error(api.patch(created["id"], {"notify": {"url": "http://10.1.2.3/hook"}}), 400,
                     "INVALID_PARAMETER", "10.1.2.3")

    def test_a_read_only_token_sees_the_notify_url_redacted(self, api):
        created = api.create(notify={"url": "https://hooks.example.com/x?key=secret"})

        shown = api.app.get(f"{BASE}/{created['id']}", headers=READ).json

        assert shown["notify"]["url"] == "[redacted]"
        assert b"secret" not in api.app.get(f"{BASE}/{created['id']}", headers=READ).body


###############################################################################
# Run now: POST /api/v1/curl/schedule/{id}/run #################################
###############################################################################

class TestRunNow:
    def test_it_answers_200_with_the_finished_run_and_every_documented_field(self, api):
        created = api.create()
        api.clock.advance(0.25)

        response = api.run(created["id"])

        assert response.status_int == 200, response.body
        run = response.json
        assert set(run) == RUN_KEYS
        assert uuid.UUID(run["run_id"])
        assert (run["schedule_id"], run["trigger"], run["attempt"], run["status"], run["status_code"],
                run["error"]) == (created["id"], "manual", 1, "ok", 200, None)
        assert run["scheduled_at"] == run["started_at"] == run["finished_at"] == "2025-01-10T12:00:00.250Z"
        assert run["duration_ms"] == 12
        assert len(api.runner.runs) == 1

    def test_the_run_is_in_the_history_the_runs_and_last_run(self, api):
        created = api.create()

        run = api.run_ok(created["id"])

        assert api.all_runs(created["id"]) == [run]
        assert api.run_of(created["id"], run["run_id"]).json == run
        shown = api.get(created["id"])
        assert (shown["last_run"], shown["last_status"], shown["history"][0]["run_id"]) == (
            "2025-01-10T12:00:00Z", "ok", run["run_id"])

    def test_a_failed_run_is_still_200_with_status_error_and_the_error(self, api):
        created = api.create()
        api.runner.script = [HTTP_500, TIMED_OUT]

        first, second = api.run_ok(created["id"]), api.run_ok(created["id"])

        assert (first["status"], first["status_code"], first["error"]) == HTTP_500
        assert (second["status"], second["status_code"], second["error"]) == TIMED_OUT

    def test_a_disabled_schedule_can_be_run_now_and_stays_disabled(self, api):
        created = api.create(cron=EVERY_SECOND, enabled=False)

        run = api.run_ok(created["id"])
        api.pass_seconds(3)

        assert run["status"] == "ok"
        assert len(api.runner.runs) == 1
        assert api.get(created["id"])["enabled"] is False
        assert api.get(created["id"])["next_run"] is None

    def test_it_sends_the_schedules_request_with_the_schedule_headers(self, api):
        created = api.create(request={"method": "POST", "json": {"a": 1}})

        api.run_ok(created["id"])

        (request, run), = api.runner.calls
        assert (request["method"], request["json"]) == ("POST", {"a": 1})
        assert (run.job.ref, run.trigger, run.slot) == (created["id"], "manual", api.clock())

    def test_wait_false_answers_202_with_the_run_id_then_the_run_shows_running_then_finished(self, api):
        created = api.create()

        response = api.run(created["id"], "?wait=false")

        assert response.status_int == 202, response.body
        assert set(response.json) == {"run_id"}
        run_id = response.json["run_id"]
        running = api.run_of(created["id"], run_id).json
        assert (running["status"], running["trigger"], running["attempt"], running["finished_at"]) == (
            "running", "manual", 1, None)
        assert set(running) == RUN_KEYS
        assert api.all_runs(created["id"])[0]["status"] == "running"

        api.stack.pool.run_all()

        finished = api.run_of(created["id"], run_id).json
        assert (finished["run_id"], finished["status"], finished["status_code"]) == (run_id, "ok", 200)
        assert finished["scheduled_at"] == running["scheduled_at"]
        assert [r["run_id"] for r in api.all_runs(created["id"])] == [run_id]

    @pytest.mark.parametrize("query", ["?wait=true", "?wait=1", "?wait=TRUE", ""])
    def test_wait_true_or_no_wait_answers_the_finished_run(self, api, query):
        created = api.create()

        response = api.run(created["id"], query)

        assert response.status_int == 200
        assert response.json["status"] == "ok"

    @pytest.mark.parametrize("query", ["?wait=0", "?wait=false", "?wait=False"])
    def test_wait_false_spellings_answer_202(self, api, query):
        created = api.create()

        assert api.run(created["id"], query).status_int == 202

    @pytest.mark.parametrize("query", ["?wait=maybe", "?wait=", "?wait=true&wait=false", "?force=1", "?limit=1"])
    def test_a_bad_wait_or_an_unknown_query_parameter_is_400(self, api, query):
        created = api.create()

        assert_error(api.run(created["id"], query), 400, "INVALID_PARAMETER")
        assert api.runner.runs == []

    def test_a_body_is_400_and_nothing_runs(self, api):
        created = api.create()

        assert_error(api.run(created["id"], body=b'{"force": true}'), 400, "INVALID_PARAMETER")
        assert api.runner.runs == []

    @pytest.mark.parametrize("schedule_id", [str(uuid.uuid4()), "not-an-id"])
    def test_an_unknown_schedule_is_404_schedule_not_found(self, api, schedule_id):
        assert_error(api.run(schedule_id), 404, "SCHEDULE_NOT_FOUND")
        assert_error(api.run(schedule_id, "?wait=false"), 404, "SCHEDULE_NOT_FOUND")
        assert_error(api.run(schedule_id, body=b"{}"), 404, "SCHEDULE_NOT_FOUND")

    def test_a_read_only_token_is_403_and_no_token_is_401(self, api):
        created = api.create()

        assert_error(api.run(created["id"], headers=READ), 403, "FORBIDDEN")
        assert_error(api.run(created["id"], headers={}), 401, "UNAUTHORIZED")
        assert api.runner.runs == []

    def test_409_run_in_progress_while_a_cron_run_is_held_and_overlap_is_forbid(self, api):
        created = api.create(cron=EVERY_SECOND)
        api.runner.hold = True
        api.pass_seconds(1)

        assert_error(api.run(created["id"]), 409, "RUN_IN_PROGRESS")
        assert_error(api.run(created["id"], "?wait=false"), 409, "RUN_IN_PROGRESS")

        assert len(api.runner.runs) == 1
        api.runner.hold = False
        api.runner.release()
        assert api.run_ok(created["id"])["status"] == "ok"

    def test_409_run_in_progress_while_a_wait_false_run_is_pending(self, api):
        created = api.create()
        assert api.run(created["id"], "?wait=false").status_int == 202

        assert_error(api.run(created["id"]), 409, "RUN_IN_PROGRESS")

        api.stack.pool.run_all()
        assert [r["status"] for r in api.all_runs(created["id"])] == ["ok"]

    def test_with_overlap_allow_a_manual_run_goes_alongside_the_one_in_flight(self, api):
        created = api.create(cron=EVERY_SECOND, overlap="allow")
        api.runner.hold = True
        api.pass_seconds(1)

        assert api.run(created["id"], "?wait=false").status_int == 202
        api.stack.pool.run_all()

        assert len(api.runner.runs) == 2
        assert [r["status"] for r in api.all_runs(created["id"])] == ["running", "running"]
        assert api.runner.release() == 2

    def test_503_service_unavailable_when_every_sync_slot_is_taken(self, open_api):
        api = open_api(threads=2)         # max(1, 2 // 2) = 1 manual run may wait at once
        busy, other = api.create(), api.create()
        api.runner.hold = True
        answers: list = []
        waiting = threading.Thread(target=lambda: answers.append(
            webtest.TestApp(api.stack.server.wsgi_app).post(f"{BASE}/{busy['id']}/run", headers=ADMIN,
                                                            expect_errors=True)), daemon=True)
        waiting.start()
        try:
            assert wait_until(lambda: len(api.runner._held) == 1, timeout=10)

            response = api.run(other["id"])

            assert_error(response, 503, "SERVICE_UNAVAILABLE")
            assert len(api.runner.runs) == 1
            assert api.run(other["id"], "?wait=false").status_int == 202     # does not hold a request thread
        finally:
            api.runner.release()
            waiting.join(timeout=10)
        assert not waiting.is_alive()
        assert answers[0].status_int == 200 and answers[0].json["status"] == "ok"
        api.runner.hold = False
        api.stack.pool.run_all()
        assert api.run(other["id"]).status_int == 200                        # the slot is free again

    def test_503_service_unavailable_while_the_server_is_stopping(self, api):
        created = api.create()
        api.runs_service.stopping = True

        assert_error(api.run(created["id"]), 503, "SERVICE_UNAVAILABLE")
        assert_error(api.run(created["id"], "?wait=false"), 503, "SERVICE_UNAVAILABLE")
        assert api.runner.runs == []


###############################################################################
# Run history: GET /{id}/runs and /{id}/runs/{run_id} ##########################
###############################################################################

def page_through(api: Api, schedule_id: str, query: str, between=None) -> tuple[list[list[str]], list[dict]]:
    """Follow next_cursor from the first page; `between()` runs after each page. (run ids per page, items)."""
    pages, items = [], []
    cursor = None
    for _ in range(1000):
        suffix = query + (("&" if query else "?") + f"cursor={cursor}" if cursor else "")
        response = api.runs(schedule_id, suffix)
        assert response.status_int == 200, response.body
        pages.append([r["run_id"] for r in response.json["items"]])
        items += response.json["items"]
        cursor = response.json["next_cursor"]
        if cursor is None:
            return pages, items
        if between is not None:
            between()
    raise AssertionError("next_cursor never ran out")


class TestRunHistory:
    def test_runs_are_newest_first_with_exactly_the_documented_fields(self, api):
        created = api.create(cron=EVERY_SECOND)
        api.pass_seconds(3)

        items = api.runs(created["id"]).json["items"]

        assert [r["scheduled_at"] for r in items] == [ms("12:00:03"), ms("12:00:02"), ms("12:00:01")]
        for run in items:
            assert set(run) == RUN_KEYS
            assert (run["trigger"], run["attempt"], run["status"]) == ("cron", 1, "ok")
            for name in ("scheduled_at", "started_at", "finished_at"):
                assert ISO_MS.match(run[name]), run[name]
        assert api.runs(created["id"]).json["next_cursor"] is None

    def test_a_schedule_that_never_ran_has_no_runs(self, api):
        created = api.create()

        assert api.runs(created["id"]).json == {"items": [], "next_cursor": None}

    def test_the_default_limit_is_50_and_the_cursor_leads_to_the_rest(self, api):
        created = api.create()
        made = [api.run_ok(created["id"])["run_id"] for _ in range(55)]

        first = api.runs(created["id"]).json
        second = api.runs(created["id"], f"?cursor={first['next_cursor']}").json

        assert [r["run_id"] for r in first["items"]] == made[::-1][:50]
        assert first["next_cursor"] is not None
        assert [r["run_id"] for r in second["items"]] == made[::-1][50:]
        assert second["next_cursor"] is None

    @pytest.mark.parametrize("limit", [1, 7, 1000])
    def test_a_limit_from_1_to_1000_is_the_page_size(self, api, limit):
        created = api.create()
        made = [api.run_ok(created["id"])["run_id"] for _ in range(8)]

        answer = api.runs(created["id"], f"?limit={limit}").json

        assert [r["run_id"] for r in answer["items"]] == made[::-1][:limit]
        assert (answer["next_cursor"] is None) == (limit >= 8)

    @pytest.mark.parametrize("query", ["?limit=0", "?limit=1001", "?limit=-1", "?limit=abc", "?limit=1.5",
                                       "?limit=", "?limit=1&limit=2", "?limit=" + "9" * 5000])
    def test_a_bad_limit_is_400_invalid_parameter(self, api, query):
        created = api.create()

        assert_error(api.runs(created["id"], query), 400, "INVALID_PARAMETER", "limit")

    @pytest.fixture
    def varied(self, api):
        """A schedule whose runs are (oldest first) ok, error, timeout, missed, ok: (api, id)."""
        created = api.create(cron=DAILY_AT_1201)
        api.runner.script = [OK, HTTP_500, TIMED_OUT]
        for _ in range(3):
            api.run_ok(created["id"])
        api.go_to("12:02:00")           # the 12:01:00 slot is a minute late: beyond the grace, missed
        api.run_ok(created["id"])
        return api, created["id"]

    @pytest.mark.parametrize("query,statuses", [
        ("?status=ok", ["ok", "ok"]),
        ("?status=error", ["error"]),
        ("?status=missed", ["missed"]),
        ("?status=error,timeout", ["timeout", "error"]),
        ("?status=missed&status=error", ["missed", "error"]),
        ("?status=ok,missed,timeout,error", ["ok", "missed", "timeout", "error", "ok"]),
        ("?status=skipped,interrupted", []),
        ("?status=running", []),
    ])
    def test_the_status_filter_takes_one_status_a_comma_list_or_repeats(self, varied, query, statuses):
        api, schedule_id = varied

        assert [r["status"] for r in api.runs(schedule_id, query).json["items"]] == statuses

    @pytest.mark.parametrize("query", ["?status=bogus", "?status=ok,bogus", "?status=", "?status=,", "?status=OK"])
    def test_a_bad_status_is_400_invalid_parameter(self, varied, query):
        api, schedule_id = varied

        assert_error(api.runs(schedule_id, query), 400, "INVALID_PARAMETER", "status")

    def test_a_status_filter_pages_with_the_cursor(self, varied):
        api, schedule_id = varied

        pages, items = page_through(api, schedule_id, "?status=ok,error&limit=1")

        assert [r["status"] for r in items] == ["ok", "error", "ok"]
        assert [len(p) for p in pages] in ([1, 1, 1], [1, 1, 1, 0])

    def test_since_keeps_the_runs_that_ended_at_or_after_it(self, api):
        created = api.create()
        made = []
        for _ in range(3):
            made.append(api.run_ok(created["id"]))
            api.clock.advance(10)

        assert [r["run_id"] for r in api.runs(created["id"], f"?since={made[1]['finished_at']}").json["items"]] == \
            [made[2]["run_id"], made[1]["run_id"]]
        assert [r["run_id"] for r in api.runs(created["id"], "?since=2025-01-10T12:00:10.001Z").json["items"]] == \
            [made[2]["run_id"]]
        assert [r["run_id"] for r in api.runs(created["id"], "?since=2025-01-10T13:00:05%2B01:00").json["items"]] \
            == [made[2]["run_id"], made[1]["run_id"]]
        assert api.runs(created["id"], "?since=2025-01-10T12:00:21Z").json["items"] == []
        assert len(api.runs(created["id"], "?since=2000-01-01T00:00:00Z").json["items"]) == 3

    @pytest.mark.parametrize("since", ["yesterday", "2025-13-01T00:00:00Z", "1736510400", "x" * 2000])
    def test_a_bad_since_is_400_invalid_parameter(self, api, since):
        created = api.create()

        assert_error(api.runs(created["id"], f"?since={since}"), 400, "INVALID_PARAMETER", "since")

    def test_following_the_cursor_while_runs_are_added_gives_every_run_once_with_no_gaps(self, api):
        created = api.create(cron=EVERY_SECOND)
        api.runner.script = [OK, HTTP_500, TIMED_OUT] * 20
        api.pass_seconds(17)
        existing = [r["run_id"] for r in api.all_runs(created["id"])]
        assert len(existing) == 17

        pages, items = page_through(api, created["id"], "?limit=3", between=lambda: api.pass_seconds(2))

        seen = [r["run_id"] for r in items]
        assert len(seen) == len(set(seen)), "a run was listed twice"
        assert seen == existing                 # every run there was at the first page, newest first, no gap
        assert all(len(page) == 3 for page in pages[:-1])
        assert len(api.all_runs(created["id"])) > 17       # runs were added meanwhile

    def test_following_the_cursor_across_log_rotations_gives_every_run_still_kept(self, open_api):
        api = open_api(runs_log_max_bytes=4096, runs_log_backups=5)
        created = api.create(cron=EVERY_SECOND)
        api.pass_seconds(25)
        existing = [r["run_id"] for r in api.all_runs(created["id"])]
        assert len(existing) == 25

        pages, items = page_through(api, created["id"], "?limit=4", between=lambda: api.pass_seconds(3))

        seen = [r["run_id"] for r in items]
        assert seen == existing
        rotated = [path for path in api.stack.server.logs["http"].files()[1:] if os.path.exists(path)]
        assert len(rotated) >= 2                # the pages really crossed rotations

    @pytest.mark.parametrize("cursor", ["garbage!!", "e30", base64.urlsafe_b64encode(b'{"offset": "1"}').decode(),
                                        base64.urlsafe_b64encode(b"[1, 2]").decode(), "%00", "x" * 1025])
    def test_a_bad_cursor_is_400_invalid_parameter(self, api, cursor):
        created = api.create()
        api.run_ok(created["id"])

        assert_error(api.runs(created["id"], f"?cursor={cursor}"), 400, "INVALID_PARAMETER", "cursor")

    def test_runs_in_flight_come_first_with_status_running(self, api):
        created = api.create(cron=EVERY_SECOND, overlap="allow")
        api.pass_seconds(2)
        api.runner.hold = True
        api.pass_seconds(1)

        items = api.runs(created["id"]).json["items"]

        assert [r["status"] for r in items] == ["running", "ok", "ok"]
        running = items[0]
        assert set(running) == RUN_KEYS
        assert (running["scheduled_at"], running["started_at"], running["finished_at"], running["status_code"],
                running["duration_ms"], running["error"]) == (ms("12:00:03"), ms("12:00:03"), None, None, None, None)
        assert api.run_of(created["id"], running["run_id"]).json == running
        assert [r["status"] for r in api.runs(created["id"], "?status=running").json["items"]] == ["running"]

    def test_a_status_filter_leaves_out_runs_in_flight_unless_it_names_running(self, api):
        created = api.create(cron=EVERY_SECOND)
        api.pass_seconds(1)
        api.runner.hold = True
        api.pass_seconds(1)

        assert [r["status"] for r in api.runs(created["id"], "?status=ok").json["items"]] == ["ok"]
        assert [r["status"] for r in api.runs(created["id"], "?status=ok,running").json["items"]] == ["running",
                                                                                                      "ok"]

    def test_a_page_filled_by_runs_in_flight_still_leads_to_the_recorded_ones(self, api):
        created = api.create(cron=EVERY_SECOND)
        api.pass_seconds(2)
        recorded = [r["run_id"] for r in api.all_runs(created["id"])]
        api.runner.hold = True
        api.pass_seconds(1)

        _, items = page_through(api, created["id"], "?limit=1")

        assert [r["status"] for r in items] == ["running", "ok", "ok"]
        assert [r["run_id"] for r in items][1:] == recorded

    def test_a_skipped_run_has_a_count_and_neither_started_at_nor_finished_at(self, api):
        created = api.create(cron=EVERY_SECOND)
        api.runner.hold = True
        api.pass_seconds(2)

        skipped, = [r for r in api.all_runs(created["id"]) if r["status"] == "skipped"]

        assert (skipped["trigger"], skipped["attempt"], skipped["scheduled_at"], skipped["count"]) == (
            "cron", 1, ms("12:00:02"), 1)
        assert skipped["started_at"] is None
        assert skipped["finished_at"] is None

    def test_a_missed_run_has_a_count_and_neither_started_at_nor_finished_at(self, api):
        created = api.create(cron="*/10 * * * * *")
        api.go_to("12:01:00")           # 12:00:10 .. 12:00:50 are missed (beyond the grace or not the latest)

        missed, = [r for r in api.all_runs(created["id"]) if r["status"] == "missed"]

        assert (missed["scheduled_at"], missed["count"]) == (ms("12:00:10"), 5)
        assert missed["started_at"] is None
        assert missed["finished_at"] is None

    @pytest.mark.parametrize("run_id", [str(uuid.uuid4()), "not-a-run", "0"])
    def test_an_unknown_run_is_404_run_not_found(self, api, run_id):
        created = api.create()
        api.run_ok(created["id"])

        assert_error(api.run_of(created["id"], run_id), 404, "RUN_NOT_FOUND")

    def test_a_run_of_another_schedule_is_404_run_not_found(self, api):
        one, other = api.create(), api.create()
        run = api.run_ok(one["id"])

        assert_error(api.run_of(other["id"], run["run_id"]), 404, "RUN_NOT_FOUND")
        assert api.run_of(one["id"], run["run_id"]).status_int == 200

    @pytest.mark.parametrize("schedule_id", [str(uuid.uuid4()), "not-an-id"])
    def test_an_unknown_schedule_is_404_schedule_not_found_on_both_routes(self, api, schedule_id):
        run = api.run_ok(api.create()["id"])

        assert_error(api.runs(schedule_id), 404, "SCHEDULE_NOT_FOUND")
        assert_error(api.runs(schedule_id, "?limit=0"), 404, "SCHEDULE_NOT_FOUND")
        assert_error(api.run_of(schedule_id, run["run_id"]), 404, "SCHEDULE_NOT_FOUND")

    def test_a_deleted_schedules_runs_are_404(self, api):
        created = api.create()
        run = api.run_ok(created["id"])
        api.app.delete(f"{BASE}/{created['id']}", headers=ADMIN)

        assert_error(api.runs(created["id"]), 404, "SCHEDULE_NOT_FOUND")
        assert_error(api.run_of(created["id"], run["run_id"]), 404, "SCHEDULE_NOT_FOUND")

    def test_an_unknown_query_parameter_is_400_on_both_routes(self, api):
        created = api.create()
        run = api.run_ok(created["id"])

        assert_error(api.runs(created["id"], "?page=2"), 400, "INVALID_PARAMETER", "page")
        assert_error(api.run_of(created["id"], run["run_id"] + "?limit=1"), 400, "INVALID_PARAMETER", "limit")

    def test_a_read_only_token_may_read_runs_and_no_token_is_401(self, api):
        created = api.create()
        run = api.run_ok(created["id"])

        assert api.runs(created["id"], headers=READ).json["items"] == [run]
        assert api.run_of(created["id"], run["run_id"], headers=READ).json == run
        assert_error(api.runs(created["id"], headers={}), 401, "UNAUTHORIZED")
        assert_error(api.run_of(created["id"], run["run_id"], headers={}), 401, "UNAUTHORIZED")

    def test_runs_survive_a_restart(self, api):
        created = api.create(cron=EVERY_SECOND)
        api.pass_seconds(3)
        before = api.all_runs(created["id"])

        reopened = api.reopen()

        assert reopened.all_runs(created["id"]) == before
        assert reopened.run_of(created["id"], before[1]["run_id"]).json == before[1]

    def test_runs_of_other_schedules_are_not_listed(self, api):
        one, other = api.create(cron=EVERY_SECOND), api.create(cron=EVERY_SECOND)
        api.pass_seconds(2)

        assert {r["schedule_id"] for r in api.all_runs(one["id"])} == {one["id"]}
        assert {r["schedule_id"] for r in api.all_runs(other["id"])} == {other["id"]}
        assert len(api.all_runs(one["id"])) == 2


###############################################################################
# What a run keeps of the answer (real HttpRunner) #############################
###############################################################################

class TestResponsePreview:
    def test_a_run_keeps_the_answers_headers_and_body_preview(self, real_api):
        with TargetServer(status=201) as target:
            created = real_api.create(url=target.url + "/hook")

            run = real_api.run_ok(created["id"])

        assert (run["status"], run["status_code"]) == ("ok", 201)
        response = run["response"]
        assert set(response) == {"headers", "body_preview", "truncated"}
        assert response["body_preview"] == "recorded\n"
        assert response["truncated"] is False
        headers = {name.lower(): value for name, value in response["headers"].items()}
        assert headers["content-type"] == "text/plain"
        assert headers["content-length"] == "9"
        assert set(run) == RUN_KEYS | {"response"}
        assert real_api.run_of(created["id"], run["run_id"]).json == run
        assert real_api.all_runs(created["id"]) == [run]

    def test_a_body_over_4_kib_is_cut_to_its_first_4_kib_and_marked_truncated(self, real_api):
        body = ("0123456789abcdef" * 320).encode()          # 5120 bytes
        with RawPeer(answering("200 OK", body, (("Content-Type", "text/plain"),))) as peer:
            created = real_api.create(url=peer.url)

            run = real_api.run_ok(created["id"])

        assert run["status"] == "ok"
        assert run["response"]["body_preview"] == body[:4096].decode()
        assert run["response"]["truncated"] is True

    def test_a_body_of_exactly_4_kib_is_not_truncated(self, real_api):
        body = b"x" * 4096
        with RawPeer(answering("200 OK", body)) as peer:
            created = real_api.create(url=peer.url)

            run = real_api.run_ok(created["id"])

        assert (run["response"]["body_preview"], run["response"]["truncated"]) == (body.decode(), False)

    def test_a_failed_answer_keeps_its_preview_too(self, real_api):
        with RawPeer(answering("503 Service Unavailable", b'{"down": true}',
                               (("Content-Type", "application/json"), ("Retry-After", "30")))) as peer:
            created = real_api.create(url=peer.url)

            run = real_api.run_ok(created["id"])

        assert (run["status"], run["status_code"]) == ("error", 503)
        assert "503" in run["error"]
        assert run["response"]["body_preview"] == '{"down": true}'
        assert {k.lower(): v for k, v in run["response"]["headers"].items()}["retry-after"] == "30"

    def test_a_body_that_is_not_utf8_is_shown_as_text_with_replacement_characters(self, real_api):
        with RawPeer(answering("200 OK", b"ok \xff\xfe end")) as peer:
            created = real_api.create(url=peer.url)

            run = real_api.run_ok(created["id"])

        assert run["response"]["body_preview"] == "ok \ufffd\ufffd end"

    def test_a_run_with_no_answer_has_no_response(self, real_api):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
        created = real_api.create(url=f"http://127.0.0.1:{port}/")     # nothing listens there now

        run = real_api.run_ok(created["id"])

        assert run["status"] == "error"
        assert run["status_code"] is None
        assert "response" not in run
        assert "response" not in real_api.run_of(created["id"], run["run_id"]).json


###############################################################################
# Retries ######################################################################
###############################################################################

class TestBackoff:
    def test_the_cloud_scheduler_example_waits_10_20_40_80_160_240_300_300(self):
        retry = schedserver.Retry(count=5, min_backoff=10, max_backoff=300, max_doublings=3)

        assert [retry.backoff(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]

    def test_the_defaults_wait_5_then_double_five_times_then_cap_at_300(self):
        retry = schedserver.Retry(count=5)

        assert [retry.backoff(n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]

    def test_with_no_doublings_every_wait_is_the_minimum_until_the_linear_growth(self):
        retry = schedserver.Retry(count=5, min_backoff=2, max_backoff=7, max_doublings=0)

        assert [retry.backoff(n) for n in range(1, 6)] == [2, 4, 6, 7, 7]

    @pytest.mark.parametrize("least,most,doublings", [(0.1, 0.1, 0), (0.1, 86400, 16), (3600, 3600, 5), (1, 5, 2)])
    def test_waits_never_shrink_never_exceed_the_maximum_and_start_at_the_minimum(self, least, most, doublings):
        retry = schedserver.Retry(count=5, min_backoff=least, max_backoff=most, max_doublings=doublings)
        waits = [retry.backoff(n) for n in range(1, 40)]

        assert waits[0] == least
        assert all(a <= b for a, b in zip(waits, waits[1:]))
        assert max(waits) <= most

    def test_a_schedules_retry_field_becomes_the_rule_with_its_defaults(self):
        assert schedserver.job_retry(schedserver.validate_retry({"count": 2})) == schedserver.Retry(2, 5, 300, 5)
        assert schedserver.job_retry(schedserver.validate_retry({"count": 0})) is None
        assert schedserver.job_retry(None) is None


class TestRetries:
    def test_a_failed_cron_run_is_retried_after_each_backoff_until_it_succeeds(self, api):
        created = api.create(cron=DAILY_AT_1201, retry={"count": 3, "min_backoff_seconds": 10})
        api.runner.script = [HTTP_500, TIMED_OUT, OK]
        api.go_to("12:01:00")
        waiting = api.all_runs(created["id"])[0]
        assert (waiting["status"], waiting["next_attempt_at"]) == ("error", ms("12:01:10"))

        api.pass_until("12:01:09")
        assert len(api.runner.runs) == 1
        api.pass_seconds(1)
        assert len(api.runner.runs) == 2
        api.pass_until("12:01:29")
        assert len(api.runner.runs) == 2
        api.pass_seconds(1)
        assert len(api.runner.runs) == 3
        api.pass_seconds(600)
        assert len(api.runner.runs) == 3            # it succeeded: no more attempts

        runs = api.oldest_first(created["id"])
        assert [(r["trigger"], r["attempt"], r["status"], r["started_at"]) for r in runs] == [
            ("cron", 1, "error", ms("12:01:00")), ("retry", 2, "timeout", ms("12:01:10")),
            ("retry", 3, "ok", ms("12:01:30"))]
        assert {r["scheduled_at"] for r in runs} == {ms("12:01:00")}
        assert len({r["run_id"] for r in runs}) == 3
        assert "next_attempt_at" not in runs[-1]

    def test_the_retries_stop_when_the_count_is_used_up(self, api):
        created = api.create(cron=DAILY_AT_1201, retry={"count": 2, "min_backoff_seconds": 10})
        api.runner.script = [HTTP_500] * 10
        api.go_to("12:01:00")

        api.pass_until("12:11:00")

        runs = api.oldest_first(created["id"])
        assert [(r["trigger"], r["attempt"], r["status"], r["started_at"]) for r in runs] == [
            ("cron", 1, "error", ms("12:01:00")), ("retry", 2, "error", ms("12:01:10")),
            ("retry", 3, "error", ms("12:01:30"))]
        assert "next_attempt_at" not in runs[-1]
        assert api.runner.script == [HTTP_500] * 7

    def test_the_retries_stop_when_the_next_slot_arrives_and_the_slot_runs(self, api):
        created = api.create(cron="*/10 * * * * *", retry={"count": 5, "min_backoff_seconds": 4})
        api.runner.script = [HTTP_500, HTTP_500, OK]

        api.pass_until("12:00:25")

        runs = api.oldest_first(created["id"])
        # 12:00:10 fails, retried at :14 (before :20); that fails too and its retry (:22) would be after :20
        assert [(r["trigger"], r["attempt"], r["status"], r["scheduled_at"], r["started_at"]) for r in runs] == [
            ("cron", 1, "error", ms("12:00:10"), ms("12:00:10")),
            ("retry", 2, "error", ms("12:00:10"), ms("12:00:14")),
            ("cron", 1, "ok", ms("12:00:20"), ms("12:00:20"))]
        assert "next_attempt_at" not in runs[1] and "next_attempt_at" not in runs[2]

    def test_a_successful_run_is_not_retried(self, api):
        created = api.create(cron=DAILY_AT_1201, retry={"count": 3, "min_backoff_seconds": 1})
        api.go_to("12:01:00")

        api.pass_seconds(60)

        assert [r["status"] for r in api.all_runs(created["id"])] == ["ok"]

    def test_without_retry_a_failed_run_is_not_retried(self, api):
        created = api.create(cron=DAILY_AT_1201)
        api.runner.script = [HTTP_500]
        api.go_to("12:01:00")

        api.pass_seconds(400)

        runs = api.all_runs(created["id"])
        assert [r["status"] for r in runs] == ["error"]
        assert "next_attempt_at" not in runs[0]

    def test_manual_runs_are_not_retried(self, api):
        created = api.create(cron=DAILY_AT_1201, retry={"count": 3, "min_backoff_seconds": 1})
        api.runner.script = [HTTP_500, HTTP_500]

        run = api.run_ok(created["id"])
        api.run(created["id"], "?wait=false")
        api.stack.pool.run_all()
        api.pass_seconds(30)

        assert run["status"] == "error" and "next_attempt_at" not in run
        assert [(r["trigger"], r["status"]) for r in api.all_runs(created["id"])] == [("manual", "error")] * 2

    def test_a_retry_sends_the_schedule_as_edited_meanwhile(self, api):
        created = api.create(cron=DAILY_AT_1201, url="https://old.example.com/",
                             retry={"count": 1, "min_backoff_seconds": 10})
        api.runner.script = [HTTP_500]
        api.go_to("12:01:00")

        api.patch(created["id"], {"request": {"url": "https://new.example.com/"}})
        api.pass_seconds(10)

        assert [request["url"] for request, _ in api.runner.calls] == ["https://old.example.com/",
                                                                       "https://new.example.com/"]
        assert api.all_runs(created["id"])[0]["trigger"] == "retry"

    @pytest.mark.parametrize("restart", ["clean", "crash"])
    def test_a_retry_waiting_at_a_restart_runs_at_its_time_after_it(self, api, restart):
        created = api.create(cron=DAILY_AT_1201, retry={"count": 3, "min_backoff_seconds": 10})
        api.runner.script = [HTTP_500]
        api.go_to("12:01:00")
        api.pass_until("12:01:03")

        reopened = api.reopen() if restart == "clean" else api.crash_and_reopen()
        reopened.pass_until("12:01:09")
        assert reopened.runner.runs == []
        reopened.pass_seconds(1)

        (_, run), = reopened.runner.calls
        assert (run.trigger, run.attempt, run.slot) == ("retry", 2, at("12:01:00"))
        runs = reopened.oldest_first(created["id"])
        assert [(r["trigger"], r["attempt"], r["status"], r["started_at"]) for r in runs] == [
            ("cron", 1, "error", ms("12:01:00")), ("retry", 2, "ok", ms("12:01:10"))]

    def test_a_retry_whose_time_passed_during_a_restart_within_the_grace_runs_at_once(self, api):
        created = api.create(cron=DAILY_AT_1201, retry={"count": 3, "min_backoff_seconds": 10})
        api.runner.script = [HTTP_500]
        api.go_to("12:01:00")
        api.stack.close()
        api.clock.set(at("12:01:30"))       # 20 s after the retry's time; the grace is 30 s

        reopened = api.reopen()
        reopened.run_due()

        runs = reopened.oldest_first(created["id"])
        assert [(r["trigger"], r["attempt"], r["status"], r["scheduled_at"]) for r in runs] == [
            ("cron", 1, "error", ms("12:01:00")), ("retry", 2, "ok", ms("12:01:00"))]

    def test_a_retry_whose_time_passed_beyond_the_grace_during_a_restart_is_recorded_missed(self, api):
        created = api.create(cron=DAILY_AT_1201, retry={"count": 3, "min_backoff_seconds": 10})
        api.runner.script = [HTTP_500]
        api.go_to("12:01:00")
        api.stack.close()
        api.clock.set(at("12:05:00"))

        reopened = api.reopen()
        reopened.pass_seconds(300)

        assert reopened.runner.runs == []
        runs = reopened.oldest_first(created["id"])
        assert [(r["trigger"], r["attempt"], r["status"], r["scheduled_at"]) for r in runs] == [
            ("cron", 1, "error", ms("12:01:00")), ("retry", 2, "missed", ms("12:01:00"))]
        again = reopened.reopen()
        again.pass_seconds(60)
        assert again.runner.runs == []
        assert len(again.all_runs(created["id"])) == 2          # recorded once, not at every start

    def test_a_retry_of_a_schedule_disabled_before_a_restart_is_recorded_missed_not_run(self, api):
        created = api.create(cron=DAILY_AT_1201, retry={"count": 3, "min_backoff_seconds": 10})
        api.runner.script = [HTTP_500]
        api.go_to("12:01:00")
        api.patch(created["id"], {"enabled": False})
        api.pass_until("12:01:03")

        reopened = api.reopen()
        reopened.pass_seconds(30)

        assert reopened.runner.runs == []
        runs = reopened.oldest_first(created["id"])
        assert [(r["trigger"], r["attempt"], r["status"]) for r in runs] == [("cron", 1, "error"),
                                                                             ("retry", 2, "missed")]


    def test_a_retry_refused_by_the_overlap_policy_is_recorded_skipped_as_that_retry_attempt(self, api):
        created = api.create(cron=DAILY_AT_1201, retry={"count": 2, "min_backoff_seconds": 10})
        api.runner.script = [HTTP_500]
        api.go_to("12:01:00")
        api.pass_until("12:01:05")
        api.runner.hold = True
        assert api.run(created["id"], "?wait=false").status_int == 202
        api.stack.pool.run_all()

        api.pass_until("12:01:10")          # the retry is due while the manual run is in flight (forbid)

        skipped, = [r for r in api.all_runs(created["id"]) if r["status"] == "skipped"]
        assert (skipped["trigger"], skipped["attempt"], skipped["scheduled_at"]) == ("retry", 2, ms("12:01:00"))


###############################################################################
# The success rule #############################################################
###############################################################################

class TestSuccessRule:
    @pytest.mark.parametrize("code,success,following,body", [
        (200, None, False, b""),
        (204, None, False, b""),
        (299, None, True, b""),
        (301, None, False, b""),
        (304, None, False, b""),
        (200, {"status": [200]}, False, b""),
        (201, {"status": ["2xx"]}, False, b""),
        (304, {"status": ["2xx", 304]}, True, b""),
        (404, {"status": ["2xx", 404]}, False, b""),
        (503, {"status": ["5xx"]}, False, b""),
        (200, {"body_contains": "ok"}, False, b'{"status": "ok"}'),
        (302, {"body_contains": "moved"}, False, b"moved"),
        (202, {"status": ["2xx"], "body_contains": "queued"}, False, b"job queued"),
    ])
    def test_answers_inside_the_rule_are_a_success(self, code, success, following, body):
        assert schedserver.judge_answer(code, "Reason", body, success, following) is None

    @pytest.mark.parametrize("code,success,following,body,mentions", [
        (404, None, False, b"", ["404"]),
        (500, None, False, b"", ["500"]),
        (100, None, False, b"", ["100"]),
        (302, None, True, b"", ["302"]),                            # following: a 3xx is not where it ended well
        (302, {"status": ["2xx"]}, False, b"", ["302", "status"]),    # a list replaces the default 3xx
        (500, {"status": ["2xx", 304]}, False, b"", ["500", "status", "2xx", "304"]),
        (201, {"status": [200]}, False, b"", ["201", "status", "200"]),
        (200, {"body_contains": "ok"}, False, b"nope", ["contain", "ok"]),
        (200, {"status": [200], "body_contains": "READY"}, False, b"ready", ["contain", "READY"]),
        (500, {"body_contains": "ok"}, False, b"ok", ["500"]),      # no status list: the default rule
    ])
    def test_answers_outside_the_rule_are_an_error_naming_the_failing_part(self, code, success, following, body,
                                                                           mentions):
        problem = schedserver.judge_answer(code, "Reason", body, success, following)

        assert problem is not None
        for text in mentions:
            assert text in problem, (text, problem)

    def test_the_status_part_and_the_body_part_are_told_apart(self):
        rule = {"status": [200], "body_contains": "ok"}

        by_status = schedserver.judge_answer(500, "Internal Server Error", b"ok", rule, False)
        by_body = schedserver.judge_answer(200, "OK", b"bad", rule, False)

        assert "status" in by_status and "contain" not in by_status
        assert "contain" in by_body and "status list" not in by_body

    def test_a_3xx_is_ok_by_default_when_redirects_are_not_followed(self, real_api):
        with RawPeer(answering("302 Found", b"", (("Location", "http://127.0.0.1:9/elsewhere"),))) as peer:
            created = real_api.create(url=peer.url)

            run = real_api.run_ok(created["id"])

        assert (run["status"], run["status_code"], run["error"]) == ("ok", 302, None)

    def test_a_final_3xx_is_an_error_by_default_when_redirects_are_followed(self, real_api):
        with RawPeer(answering("302 Found", b"nowhere to go")) as peer:      # no Location: where it ends
            created = real_api.create(url=peer.url, request={"follow_redirects": True})

            run = real_api.run_ok(created["id"])

        assert (run["status"], run["status_code"]) == ("error", 302)
        assert "302" in run["error"]

    def test_a_status_list_makes_a_listed_error_code_a_success(self, real_api):
        with RawPeer(answering("404 Not Found", b"gone")) as peer:
            created = real_api.create(url=peer.url, success={"status": ["2xx", 404]})

            run = real_api.run_ok(created["id"])

        assert (run["status"], run["status_code"], run["error"]) == ("ok", 404, None)

    def test_a_2xx_outside_the_status_list_is_an_error_saying_so(self, real_api):
        with RawPeer(answering("202 Accepted", b"later")) as peer:
            created = real_api.create(url=peer.url, success={"status": [200]})

            run = real_api.run_ok(created["id"])

        assert (run["status"], run["status_code"]) == ("error", 202)
        assert "status" in run["error"] and "202" in run["error"]
        assert run["response"]["body_preview"] == "later"

    def test_body_contains_is_looked_for_in_the_answer(self, real_api):
        with RawPeer(answering("200 OK", b'{"healthy": true}')) as peer:
            created = real_api.create(url=peer.url, success={"body_contains": '"healthy": true'})
            assert real_api.run_ok(created["id"])["status"] == "ok"

            real_api.patch(created["id"], {"success": {"body_contains": '"healthy": false'}})
            run = real_api.run_ok(created["id"])

        assert (run["status"], run["status_code"]) == ("error", 200)
        assert "contain" in run["error"] and '"healthy": false' in run["error"]

    def test_body_contains_looks_at_the_first_64_kib_only(self, real_api):
        body = b"a" * (66 * 1024) + b"NEEDLE" + b"b" * 100
        with RawPeer(answering("200 OK", body)) as peer:
            created = real_api.create(url=peer.url, success={"body_contains": "NEEDLE"})

            run = real_api.run_ok(created["id"])

        assert run["status"] == "error"
        assert "NEEDLE" in run["error"]
        assert run["response"]["truncated"] is True

    def test_a_rule_set_by_edit_applies_to_the_next_run(self, real_api):
        with RawPeer(answering("500 Internal Server Error", b"known")) as peer:
            created = real_api.create(url=peer.url)
            assert real_api.run_ok(created["id"])["status"] == "error"

            real_api.patch(created["id"], {"success": {"status": [500]}})

            assert real_api.run_ok(created["id"])["status"] == "ok"


###############################################################################
# Overlap ######################################################################
###############################################################################

class TestOverlap:
    def test_forbid_records_the_slot_skipped_while_a_run_is_in_flight(self, api):
        created = api.create(cron=EVERY_SECOND)
        api.runner.hold = True

        api.pass_seconds(3)

        assert len(api.runner.runs) == 1
        items = api.all_runs(created["id"])
        assert [(r["status"], r["scheduled_at"]) for r in items] == [
            ("running", ms("12:00:01")), ("skipped", ms("12:00:03")), ("skipped", ms("12:00:02"))]
        assert items[1]["error"] == "previous run still in progress"
        api.runner.release()
        api.runner.hold = False
        api.pass_seconds(1)
        assert [r["status"] for r in api.all_runs(created["id"])][:2] == ["ok", "ok"]

    def test_forbid_is_the_default(self, api):
        assert api.create()["overlap"] == "forbid"

    def test_allow_runs_two_at_once(self, api):
        created = api.create(cron=EVERY_SECOND, overlap="allow")
        api.runner.hold = True

        api.pass_seconds(2)

        assert len(api.runner.runs) == 2
        assert api.stack.recorder.count() == 2
        assert [r["status"] for r in api.all_runs(created["id"])] == ["running", "running"]
        assert api.runner.release() == 2
        statuses = [(r["status"], r["scheduled_at"]) for r in api.all_runs(created["id"])]
        assert sorted(statuses) == [("ok", ms("12:00:01")), ("ok", ms("12:00:02"))]

    def test_allow_runs_up_to_the_cap_and_skips_beyond_it(self, open_api):
        api = open_api(overlap_limit=2)
        created = api.create(cron=EVERY_SECOND, overlap="allow")
        api.runner.hold = True

        api.pass_seconds(3)

        assert len(api.runner.runs) == 2
        assert [r["status"] for r in api.all_runs(created["id"])] == ["running", "running", "skipped"]
        assert api.runner.release() == 2
        api.runner.hold = False
        api.pass_seconds(1)
        assert [r["status"] for r in api.all_runs(created["id"])].count("ok") == 3

    def test_replace_stops_the_running_one_recorded_error_replaced_and_runs_the_new_one(self, api):
        created = api.create(cron=EVERY_SECOND, overlap="replace")
        api.runner.hold = True
        api.pass_seconds(1)
        first = api.all_runs(created["id"])[0]

        api.pass_seconds(1)

        items = api.all_runs(created["id"])
        assert [(r["status"], r["scheduled_at"]) for r in items] == [("running", ms("12:00:02")),
                                                                    ("error", ms("12:00:01"))]
        replaced = items[1]
        assert (replaced["run_id"], replaced["error"], replaced["trigger"]) == (first["run_id"], "replaced", "cron")
        assert len(api.runner.runs) == 2
        assert api.runner.release() == 1
        newest = api.all_runs(created["id"])[0]
        assert (newest["status"], newest["scheduled_at"]) == ("ok", ms("12:00:02"))

    def test_replace_of_a_run_is_not_retried(self, api):
        created = api.create(cron="*/10 * * * * *", overlap="replace", retry={"count": 3, "min_backoff_seconds": 1})
        api.runner.hold = True
        api.pass_until("12:00:20")
        api.runner.release()
        api.runner.hold = False

        api.pass_seconds(5)

        runs = api.oldest_first(created["id"])
        assert [(r["trigger"], r["status"], r["error"]) for r in runs] == [("cron", "error", "replaced"),
                                                                          ("cron", "ok", None)]

    def test_a_manual_run_with_replace_replaces_the_cron_run_in_flight(self, api):
        created = api.create(cron=EVERY_SECOND, overlap="replace")
        api.runner.hold = True
        api.pass_seconds(1)

        assert api.run(created["id"], "?wait=false").status_int == 202
        api.stack.pool.run_all()

        items = api.all_runs(created["id"])
        assert [(r["trigger"], r["status"]) for r in items] == [("manual", "running"), ("cron", "error")]
        assert items[1]["error"] == "replaced"


###############################################################################
# Jitter #######################################################################
###############################################################################

class TestJitter:
    def test_a_run_starts_at_its_slot_plus_the_random_delay_and_keeps_its_slot_as_scheduled_at(self, api):
        asked: list[float] = []
        api.runs_service.random_delay = lambda most: asked.append(most) or 7.0
        created = api.create(cron=DAILY_AT_1201, jitter_seconds=20)

        api.go_to("12:01:00")
        api.pass_until("12:01:06")
        assert api.runner.runs == []
        api.pass_seconds(1)

        assert asked == [20]
        (_, run), = api.runner.calls
        assert run.slot == at("12:01:00")
        (record,) = api.all_runs(created["id"])
        assert (record["trigger"], record["attempt"], record["status"], record["scheduled_at"],
                record["started_at"]) == ("cron", 1, "ok", ms("12:01:00"), ms("12:01:07"))

    def test_a_delay_longer_than_the_misfire_grace_still_runs_lateness_counts_from_the_delayed_start(self, api):
        api.runs_service.random_delay = lambda most: 300.0
        created = api.create(cron=DAILY_AT_1201, jitter_seconds=600)

        api.go_to("12:01:00")
        api.pass_until("12:06:00")

        (record,) = api.all_runs(created["id"])
        assert (record["status"], record["scheduled_at"], record["started_at"]) == (
            "ok", ms("12:01:00"), ms("12:06:00"))

    def test_each_slot_draws_its_own_delay(self, api):
        delays = itertools.cycle([3.0, 1.0, 9.0])
        api.runs_service.random_delay = lambda most: next(delays)
        created = api.create(cron="*/10 * * * * *", jitter_seconds=9)

        api.pass_until("12:00:39")

        runs = api.oldest_first(created["id"])
        assert [(r["scheduled_at"], r["started_at"]) for r in runs] == [
            (ms("12:00:10"), ms("12:00:13")), (ms("12:00:20"), ms("12:00:21")), (ms("12:00:30"), ms("12:00:39"))]

    def test_without_jitter_no_delay_is_drawn(self, api):
        api.runs_service.random_delay = lambda most: pytest.fail("no delay should be drawn")
        created = api.create(cron=DAILY_AT_1201)

        api.go_to("12:01:00")

        assert api.all_runs(created["id"])[0]["started_at"] == ms("12:01:00")

    def test_manual_runs_and_retries_are_not_delayed(self, api):
        api.runs_service.random_delay = lambda most: 30.0
        created = api.create(cron=DAILY_AT_1201, jitter_seconds=60, retry={"count": 1, "min_backoff_seconds": 5})
        api.runner.script = [OK, HTTP_500, OK]

        manual = api.run_ok(created["id"])
        api.go_to("12:01:00")
        api.pass_until("12:01:35")

        assert manual["started_at"] == ms("12:00:00")
        runs = api.oldest_first(created["id"])
        assert [(r["trigger"], r["scheduled_at"], r["started_at"]) for r in runs] == [
            ("manual", ms("12:00:00"), ms("12:00:00")), ("cron", ms("12:01:00"), ms("12:01:30")),
            ("retry", ms("12:01:00"), ms("12:01:35"))]

    def test_the_default_delay_is_drawn_within_the_jitter(self, api):
        draw = api.runs_service.random_delay
        delays = [draw(5.0) for _ in range(200)]

        assert all(0.0 <= d <= 5.0 for d in delays)
        assert len(set(delays)) > 1
        assert draw(0.0) == 0.0

    def test_a_disabled_schedule_drops_its_delayed_run(self, api):
        api.runs_service.random_delay = lambda most: 10.0
        created = api.create(cron=DAILY_AT_1201, jitter_seconds=10)
        api.go_to("12:01:00")

        api.patch(created["id"], {"enabled": False})
        api.pass_seconds(20)

        assert api.runner.runs == []


    def test_a_run_waiting_out_its_delay_at_a_restart_still_runs_after_it(self, api):
        api.runs_service.random_delay = lambda most: 20.0
        created = api.create(cron=DAILY_AT_1201, jitter_seconds=30)
        api.go_to("12:01:00")
        api.pass_until("12:01:05")

        reopened = api.reopen()
        reopened.stack.server.runs.random_delay = lambda most: 20.0
        reopened.pass_until("12:01:30")

        (record,) = reopened.all_runs(created["id"])
        assert (record["status"], record["scheduled_at"], record["started_at"]) == (
            "ok", ms("12:01:00"), ms("12:01:20"))


###############################################################################
# End to end: the real server process ###########################################
###############################################################################

class FlakyTarget:
    """A loopback HTTP target answering 500 to its first `failures` requests, then 200; records arrivals."""

    def __init__(self, failures: int):
        self.failures = failures
        self.arrivals: list[tuple[float, dict]] = []
        self._lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                with target._lock:
                    target.arrivals.append((time.time(), dict(self.headers.items())))
                    failing = len(target.arrivals) <= target.failures
                payload = b"failing\n" if failing else b"fine\n"
                self.send_response(500 if failing else 200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/flaky"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def received(self) -> list[tuple[float, dict]]:
        with self._lock:
            return list(self.arrivals)

    def __enter__(self) -> "FlakyTarget":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.mark.parametrize("failures", [3])
def test_a_target_failing_n_times_then_succeeding_gets_n_plus_1_attempts_recorded_as_retries(tmp_path, failures):
    with FlakyTarget(failures) as target, ServerProcess(tmp_path / "data", tmp_path / "scripts") as server:
        slot = datetime.fromtimestamp(int(time.time()) + 4, timezone.utc)
        cron = f"{slot.second} {slot.minute} {slot.hour} * * *"         # once, 4 s from now, then a day later
        answer = server.api("POST", CURL_PATH, json={
            "cron": cron, "timezone": "UTC", "request": {"url": target.url, "timeout": 5},
            "retry": {"count": failures, "min_backoff_seconds": 0.1, "max_doublings": 0}})
        assert answer.status_code == 201, answer.text
        schedule_id = answer.json()["id"]

        arrivals = wait_until(lambda: len(target.received()) >= failures + 1 and target.received(), timeout=30)
        assert arrivals and len(arrivals) == failures + 1, (len(target.received()), server.stderr_text())

        def recorded() -> list[dict]:
            items = server.api("GET", f"{CURL_PATH}/{schedule_id}/runs").json()["items"]
            return items if len(items) == failures + 1 and items[0]["status"] == "ok" else []

        items = wait_until(recorded, timeout=10)
        assert items, server.api("GET", f"{CURL_PATH}/{schedule_id}/runs").text
        runs = list(reversed(items))
        assert [r["attempt"] for r in runs] == list(range(1, failures + 2))
        assert [r["trigger"] for r in runs] == ["cron"] + ["retry"] * failures
        assert [r["status"] for r in runs] == ["error"] * failures + ["ok"]
        assert [r["status_code"] for r in runs] == [500] * failures + [200]
        assert {r["scheduled_at"] for r in runs} == {slot.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
        assert len({r["run_id"] for r in runs}) == failures + 1
        assert "next_attempt_at" not in runs[-1]
        assert runs[-1]["response"]["body_preview"] == "fine\n"
        started = [datetime.fromisoformat(r["started_at"].replace("Z", "+00:00")) for r in runs]
        assert started == sorted(started)
        assert {headers.get("X-Schedserver-Scheduled-At") for _, headers in arrivals} == {
            slot.strftime("%Y-%m-%dT%H:%M:%SZ")}
        assert {headers.get("X-Schedserver-Schedule-Id") for _, headers in arrivals} == {schedule_id}

        one = server.api("GET", f"{CURL_PATH}/{schedule_id}/runs/{runs[1]['run_id']}").json()
        assert one == runs[1]
        shown = server.api("GET", f"{CURL_PATH}/{schedule_id}").json()
        assert shown["last_status"] == "ok"
        assert [h["status"] for h in shown["history"]] == ["ok"] + ["error"] * failures
        assert len(target.received()) == failures + 1

"""Route tests for the HTTP request schedule API (/api/v1/curl/schedule) with webtest.

Each test drives the real server (tests/harness.py's Stack): the real services, recorder, run state and storage
over a temporary data dir, with a fake clock, a worker pool that runs only when told and a scripted HTTP runner.
Runs are fed by ticking at the fake clock's now and running what the pool holds, so nothing sleeps or touches a
network.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import urllib.parse
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schedserver
from fakes import FakeClock
from harness import ADMIN, READ, Stack
from stored import store_file_stamps, store_files, stored_definitions

BASE = "/api/v1/curl/schedule"
READER = READ
NOW = datetime(2025, 1, 15, 10, 30, 0, tzinfo=timezone.utc).timestamp() + 0.75    # a Wednesday, mid-second
SECOND_PRECISION_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
HUGE = "9" * 5000                  # int() refuses strings of over 4,300 digits
HISTORY_KEYS = {"run_id", "scheduled_at", "started_at", "status", "status_code", "duration_ms", "error"}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


###############################################################################
# The harness ##################################################################
###############################################################################

class Api:
    """One server (a Stack) with helpers that read like the API."""

    def __init__(self, stack: Stack, opened: list[Stack]):
        self.stack = stack
        self._opened = opened
        opened.append(stack)

    # -- what tests look at ---------------------------------------------------------------------------------
    @property
    def app(self):
        return self.stack.app

    @property
    def clock(self) -> FakeClock:
        return self.stack.clock

    @property
    def scheduler(self) -> schedserver.Scheduler:
        return self.stack.scheduler

    @property
    def http(self) -> schedserver.HttpSchedules:
        return self.stack.http

    @property
    def store(self) -> schedserver.JournalStore:
        return self.stack.http.store

    @property
    def runner(self):
        """The scripted HTTP runner: `.runs` are the runs it was given, `.script` the results to answer."""
        return self.stack.http_runner

    @property
    def runs_log(self) -> schedserver.NdjsonLog:
        return self.stack.server.logs["http"]

    @property
    def data_dir(self):
        return self.stack.data_dir

    def reopen(self) -> Api:
        """A fresh server on the same files, as after a clean restart."""
        return Api(self.stack.reopen(), self._opened)

    # -- requests -------------------------------------------------------------------------------------------
    def post(self, body, headers=ADMIN, query: str = ""):
        return self.app.post_json(BASE + query, body, headers=headers, expect_errors=True)

    def post_raw(self, raw: bytes | str, content_type: str | None = "application/json", headers=ADMIN):
        return self.app.post(BASE, raw, headers=headers, content_type=content_type, expect_errors=True)

    def create(self, cron: str = "0 0 9 * * MON-FRI", url: str = "https://api.example.com/reports/daily",
               **fields) -> dict:
        request = {"url": url, **fields.pop("request", {})}
        response = self.post({"cron": cron, "request": request, **fields})
        assert response.status_int == 201, response.body
        return response.json

    def list(self, query: str = "", headers=ADMIN):
        return self.app.get(BASE + query, headers=headers, expect_errors=True)

    def get(self, schedule_id: str, headers=ADMIN, query: str = ""):
        return self.app.get(f"{BASE}/{schedule_id}{query}", headers=headers, expect_errors=True)

    def toggle(self, schedule_id: str, body=None, headers=ADMIN, query: str = ""):
        url = f"{BASE}/{schedule_id}/toggle{query}"
        if body is None:
            return self.app.patch(url, headers=headers, expect_errors=True)
        return self.app.patch_json(url, body, headers=headers, expect_errors=True)

    def delete(self, schedule_id: str, headers=ADMIN, query: str = ""):
        return self.app.delete(f"{BASE}/{schedule_id}{query}", headers=headers, expect_errors=True)

    # -- time -----------------------------------------------------------------------------------------------
    def run_due(self) -> int:
        """Tick at the fake clock's now and run what was handed to the pool, inline."""
        return self.stack.run_due()

    def pass_seconds(self, seconds: int) -> None:
        """Let `seconds` pass one whole second at a time, ticking and running after each."""
        self.stack.pass_seconds(seconds)

    # -- storage faults -------------------------------------------------------------------------------------
    def fail_writes(self, fault: BaseException | None) -> None:
        """Make every append to the schedules journal raise `fault` (None: work again)."""
        if fault is None:
            self.store.__dict__.pop("_append", None)
            return

        def failing_append(line: bytes) -> None:
            raise fault

        self.store._append = failing_append


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


def assert_error(response, status: int, code: str, *mentions: str) -> None:
    """A JSON error in this surface's shape: exactly {"error": CODE, "message": text}."""
    assert response.status_int == status, response.body
    assert response.content_type == "application/json"
    body = json.loads(response.body)
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"].strip()
    for text in mentions:
        assert text in body["message"], (text, body["message"])
    assert b"Traceback" not in response.body and b"<html" not in response.body.lower()


def valid_create_body(**overrides) -> dict:
    body = {"cron": "0 0 9 * * MON-FRI", "request": {"url": "https://api.example.com/reports/daily"}}
    body.update(overrides)
    return body


def with_request(**request_fields) -> dict:
    return valid_create_body(request={"url": "https://api.example.com/reports/daily", **request_fields})


###############################################################################
# Create #######################################################################
###############################################################################

class TestCreate:
    def test_it_answers_201_with_the_documented_fields_and_the_defaults(self, server):
        response = server.post({"cron": "0 0 9 * * MON-FRI",
                                "request": {"url": "https://api.example.com/reports/daily"}})

        assert response.status_int == 201
        assert response.content_type == "application/json"
        body = response.json
        assert str(uuid.UUID(body["id"])) == body["id"]
        assert body["cron"] == "0 0 9 * * MON-FRI"
        assert body["enabled"] is True
        assert body["created_at"] == "2025-01-15T10:30:00Z"
        assert body["name"] is None
        assert body["timezone"] == "UTC"
        assert body["next_run"] == "2025-01-16T09:00:00Z"      # Thursday 09:00 UTC
        assert body["request"]["url"] == "https://api.example.com/reports/daily"
        assert body["request"]["method"] == "GET"
        assert body["request"]["timeout"] == 30
        assert body["request"]["follow_redirects"] is False

    def test_its_timestamps_are_utc_with_second_precision_and_z(self, server):
        body = server.create(cron="* * * * * *")

        assert SECOND_PRECISION_UTC.match(body["created_at"])
        assert SECOND_PRECISION_UTC.match(body["next_run"])
        assert body["next_run"] == "2025-01-15T10:30:01Z"

    def test_each_schedule_gets_its_own_id(self, server):
        ids = {server.create()["id"] for _ in range(3)}

        assert len(ids) == 3

    def test_it_keeps_every_given_field(self, server):
        body = server.create(
            cron="0 */5 * * * *", url="http://127.0.0.1:9000/hook", name="Hook every five minutes",
            timezone="Europe/Berlin",
            request={"method": "POST", "headers": {"Authorization": "Bearer xyz", "X-Trace": "1"},
                     "json": {"a": [1, 2]}, "timeout": 2.5, "follow_redirects": True})

        assert body["name"] == "Hook every five minutes"
        assert body["timezone"] == "Europe/Berlin"
        assert body["request"] == {"url": "http://127.0.0.1:9000/hook", "method": "POST",
                                   "headers": {"Authorization": "Bearer xyz", "X-Trace": "1"},
                                   "json": {"a": [1, 2]}, "timeout": 2.5, "follow_redirects": True}

    def test_it_accepts_a_string_body(self, server):
        body = server.create(request={"method": "PUT", "body": "plain text"})

        assert body["request"]["body"] == "plain text"
        assert body["request"]["method"] == "PUT"

    @pytest.mark.parametrize("given, stored", [("post", "POST"), ("Delete", "DELETE"), ("options", "OPTIONS"),
                                               ("HEAD", "HEAD"), ("patch", "PATCH")])
    def test_the_method_is_case_insensitive(self, server, given, stored):
        body = server.create(request={"method": given})

        assert body["request"]["method"] == stored

    @pytest.mark.parametrize("cron, next_run", [
        ("0 0 9 * * MON-FRI", "2025-01-16T09:00:00Z"),
        ("*/15 * * * * *", "2025-01-15T10:30:15Z"),
        ("0 0 12 1 * *", "2025-02-01T12:00:00Z"),
        ("0 30 8 * jan,feb wed", "2025-01-22T08:30:00Z"),
        ("*/5 * * * *", "2025-01-15T10:35:00Z"),          # five fields, minute first
        ("0 9 * * 1-5", "2025-01-16T09:00:00Z"),
        ("@hourly", "2025-01-15T11:00:00Z"),
        ("@daily", "2025-01-16T00:00:00Z"),
        ("@midnight", "2025-01-16T00:00:00Z"),
        ("@weekly", "2025-01-19T00:00:00Z"),               # Sunday
        ("@monthly", "2025-02-01T00:00:00Z"),
        ("@yearly", "2026-01-01T00:00:00Z"),
        ("@annually", "2026-01-01T00:00:00Z"),
    ])
    def test_it_accepts_six_field_five_field_and_macro_crons(self, server, cron, next_run):
        body = server.create(cron=cron)

        assert body["cron"] == cron
        assert body["next_run"] == next_run

    def test_a_schedule_created_disabled_has_no_next_run_and_is_not_registered(self, server):
        body = server.create(enabled=False)

        assert body["enabled"] is False
        assert body["next_run"] is None
        assert len(server.scheduler) == 0

    def test_the_timezone_defaults_to_the_servers(self, open_api):
        berlin = open_api(timezone="Europe/Berlin")

        body = berlin.create(cron="0 0 9 * * *")

        assert body["timezone"] == "Europe/Berlin"
        assert body["next_run"] == "2025-01-16T08:00:00Z"      # 09:00 in Berlin is 08:00 UTC in winter

    def test_a_name_of_exactly_200_characters_is_accepted(self, server):
        assert server.create(name="n" * 200)["name"] == "n" * 200

    @pytest.mark.parametrize("timeout", [0.5, 1, 300])
    def test_timeouts_above_zero_up_to_300_seconds_are_accepted(self, server, timeout):
        assert server.create(request={"timeout": timeout})["request"]["timeout"] == timeout

    def test_a_json_body_with_a_charset_is_accepted(self, server):
        response = server.post_raw(json.dumps(valid_create_body()), "application/json; charset=utf-8")

        assert response.status_int == 201

    def test_a_json_body_without_a_content_type_is_accepted(self, server):
        response = server.post_raw(json.dumps(valid_create_body()), content_type="")

        assert response.status_int == 201

    def test_a_body_of_exactly_one_mebibyte_is_accepted(self, server):
        raw = json.dumps(valid_create_body()).encode()
        raw += b" " * (schedserver.MAX_BODY_BYTES - len(raw))
        assert len(raw) == 1024 * 1024

        response = server.post_raw(raw)

        assert response.status_int == 201

    def test_the_new_schedule_fires_at_its_next_run(self, server):
        body = server.create(cron="*/10 * * * * *", request={"headers": {"X-Key": "k"}})

        server.clock.advance(9.25)      # 10:30:10
        assert server.run_due() == 1

        [run] = server.runner.runs
        assert run.job.target.request["url"] == "https://api.example.com/reports/daily"
        assert run.job.target.request["headers"] == {"X-Key": "k"}
        assert (run.job.kind, run.job.ref, run.trigger) == ("http", body["id"], "cron")
        assert schedserver.utc_iso(run.slot) == "2025-01-15T10:30:10Z"


class TestCreateRejects:
    @pytest.mark.parametrize("cron", [
        "* * * *",                       # four fields
        "* * * * * * *",                 # seven fields
        "61 * * * * *",
        "0 60 * * * *",
        "0 0 24 * * *",
        "0 0 0 32 * *",
        "0 0 0 * 13 *",
        "0 0 0 * * 8",
        "0 0 0 * * FUNDAY",
        "0 0 0 * FOO *",
        "0 0 0 30 2 *",                  # February 30th never comes
        "0 10-5 * * * *",                # backwards range
        "*/0 * * * * *",
        "every minute",
        "@every 5s",
        "@reboot",
        "",
        "   ",
    ])
    def test_an_invalid_cron_answers_400_invalid_cron_expression_showing_the_six_field_format(self, server, cron):
        assert_error(server.post(valid_create_body(cron=cron)), 400, "INVALID_CRON_EXPRESSION",
                     "second minute hour day month weekday")

    @pytest.mark.parametrize("cron", [
        f"{HUGE} * * * * *",
        f"0 {HUGE} * * * *",
        f"0 0 1-{HUGE} * * *",
        f"*/{HUGE} * * * * *",
        f"0 0 0 {HUGE} * *",
        f"0 0 0 * {HUGE} *",
        f"0 0 0 * * 1/{HUGE}",
        f"0 0 0 * * {HUGE}",
        f"{HUGE} * * * *",                                  # five fields
    ], ids=["second", "minute", "hour-range-end", "second-step", "day", "month", "weekday-step", "weekday",
            "five-fields"])
    def test_a_cron_field_with_a_5000_digit_number_answers_a_clean_400_invalid_cron_expression(self, server,
                                                                                                cron):
        response = server.post(valid_create_body(cron=cron))

        assert_error(response, 400, "INVALID_CRON_EXPRESSION", "second minute hour day month weekday")
        assert server.http.count() == 0
        assert server.post(valid_create_body()).status_int == 201

    def test_an_invalid_cron_creates_nothing(self, server):
        server.post(valid_create_body(cron="nope"))

        assert server.list().json["meta"]["total"] == 0
        assert store_files(server.data_dir) == {"curl-schedules.json": None, "curl-schedules.journal": None}

    @pytest.mark.parametrize("body, field", [
        ({"cron": "0 0 9 * * *"}, "request"),
        ({"request": {"url": "https://example.com/"}}, "cron"),
        (valid_create_body(request=None), "request"),
        (valid_create_body(request="https://example.com/"), "request"),
        (valid_create_body(request={}), "request.url"),
        (valid_create_body(request={"method": "GET"}), "request.url"),
        (with_request(url=None), "request.url"),
        (with_request(url=42), "request.url"),
        (with_request(url=""), "request.url"),
        (with_request(url="ftp://example.com/file"), "request.url"),
        (with_request(url="file:///etc/passwd"), "request.url"),
        (with_request(url="javascript:alert(1)"), "request.url"),
        (with_request(url="example.com/no-scheme"), "request.url"),
        (with_request(url="http://"), "request.url"),
        (with_request(url="http:///path-only"), "request.url"),
        (with_request(url="http://example.com:99999/"), "request.url"),
        (with_request(url="http://exa mple.com/"), "request.url"),
        (with_request(method="FETCH"), "request.method"),
        (with_request(method="CONNECT"), "request.method"),
        (with_request(method=""), "request.method"),
        (with_request(method=1), "request.method"),
        (with_request(headers=["X-A: 1"]), "request.headers"),
        (with_request(headers="X-A: 1"), "request.headers"),
        (with_request(headers={"X-A": 1}), "request.headers"),
        (with_request(headers={"X-A": None}), "request.headers"),
        (with_request(headers={"X-A": ["1"]}), "request.headers"),
        (with_request(headers={"X-A": "1\r\nX-Injected: 2"}), "request.headers"),
        (with_request(headers={"Bad Name": "1"}), "request.headers"),
        (with_request(body={"a": 1}), "request.body"),
        (with_request(body=5), "request.body"),
        (with_request(body="text", json={"a": 1}), "request.body"),
        (with_request(timeout=0), "request.timeout"),
        (with_request(timeout=-1), "request.timeout"),
        (with_request(timeout=301), "request.timeout"),
        (with_request(timeout="5"), "request.timeout"),
        (with_request(timeout=True), "request.timeout"),
        (with_request(timeout=None), "request.timeout"),
        (with_request(follow_redirects="yes"), "request.follow_redirects"),
        (with_request(follow_redirects=1), "request.follow_redirects"),
        (with_request(follow_redirects=None), "request.follow_redirects"),
        (with_request(verb="GET"), "request.verb"),
        (valid_create_body(name="n" * 201), "name"),
        (valid_create_body(name=5), "name"),
        (valid_create_body(enabled="true"), "enabled"),
        (valid_create_body(enabled=1), "enabled"),
        (valid_create_body(enabled=None), "enabled"),
        (valid_create_body(timezone="Mars/Olympus_Mons"), "timezone"),
        (valid_create_body(timezone="../../etc/passwd"), "timezone"),
        (valid_create_body(timezone="right/Europe/Berlin"), "timezone"),    # counts leap seconds: times off
        (valid_create_body(timezone="posix/Europe/Berlin"), "timezone"),    # a duplicate, not a canonical name
        (valid_create_body(timezone="localtime"), "timezone"),              # whatever the machine says
        (valid_create_body(timezone="posixrules"), "timezone"),
        (valid_create_body(timezone="Factory"), "timezone"),
        (valid_create_body(timezone=""), "timezone"),
        (valid_create_body(timezone=1), "timezone"),
        (valid_create_body(colour="blue"), "colour"),
        (valid_create_body(id="a1b2c3d4-e5f6-7890-abcd-ef1234567890"), "id"),
    ], ids=lambda value: value if isinstance(value, str) else None)
    def test_an_invalid_field_answers_400_invalid_parameter_naming_it(self, server, body, field):
        assert_error(server.post(body), 400, "INVALID_PARAMETER", field)
        assert server.http.count() == 0

    def test_body_and_json_together_are_refused_naming_both(self, server):
        assert_error(server.post(with_request(body="x", json="x")), 400, "INVALID_PARAMETER",
                     "request.body", "request.json")

    @pytest.mark.parametrize("raw", [b"{not json", b"{\"cron\": ", b"\xff\xfe\x00", b"cron=* * * * * *"])
    def test_a_body_that_is_not_json_answers_400_invalid_parameter(self, server, raw):
        assert_error(server.post_raw(raw), 400, "INVALID_PARAMETER", "JSON")

    @pytest.mark.parametrize("raw", [b"[]", b"[{\"cron\": \"* * * * * *\"}]", b"5", b"\"text\"", b"null",
                                     b"true"])
    def test_a_json_body_that_is_not_an_object_answers_400_invalid_parameter(self, server, raw):
        assert_error(server.post_raw(raw), 400, "INVALID_PARAMETER", "body")

    @pytest.mark.parametrize("raw", [b"", b"   \n"])
    def test_an_empty_body_answers_400_invalid_parameter(self, server, raw):
        assert_error(server.post_raw(raw), 400, "INVALID_PARAMETER", "body")

    def test_a_body_over_one_mebibyte_answers_413_in_json(self, server):
        raw = json.dumps(valid_create_body()).encode()
        raw += b" " * (schedserver.MAX_BODY_BYTES + 1 - len(raw))

        assert_error(server.post_raw(raw), 413, "PAYLOAD_TOO_LARGE")
        assert server.http.count() == 0

    @pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                              "multipart/form-data; boundary=x", "application/xml"])
    def test_a_body_that_is_not_declared_json_answers_400_invalid_parameter(self, server, content_type):
        response = server.post_raw(json.dumps(valid_create_body()), content_type)

        assert_error(response, 400, "INVALID_PARAMETER", "Content-Type")
        assert server.http.count() == 0


###############################################################################
# List #########################################################################
###############################################################################

class TestList:
    def create_five(self, server) -> list[str]:
        """Five schedules a minute apart; returns their ids oldest first."""
        ids = []
        for n in range(5):
            ids.append(server.create(name=f"schedule {n}")["id"])
            server.clock.advance(60)
        return ids

    def test_an_empty_list_has_no_items_and_a_total_of_zero(self, server):
        response = server.list()

        assert response.status_int == 200
        assert response.content_type == "application/json"
        assert response.json["items"] == []
        assert response.json["meta"] == {"page": 1, "limit": 1, "total": 0}     # limit max(1, total)

    def test_it_lists_newest_first_with_all_items_when_limit_is_omitted(self, server):
        ids = self.create_five(server)

        body = server.list().json

        assert [item["id"] for item in body["items"]] == ids[::-1]
        assert [item["created_at"] for item in body["items"]] == [
            "2025-01-15T10:34:00Z", "2025-01-15T10:33:00Z", "2025-01-15T10:32:00Z", "2025-01-15T10:31:00Z",
            "2025-01-15T10:30:00Z"]
        assert body["meta"] == {"page": 1, "limit": 5, "total": 5}

    def test_it_orders_by_created_at_even_when_the_clock_stepped_back_between_creates(self, server):
        later = server.create(name="later")["id"]
        server.clock.advance(-3600)         # e.g. NTP corrected the clock
        earlier = server.create(name="earlier")["id"]

        items = server.list().json["items"]

        assert [item["id"] for item in items] == [later, earlier]

    def test_the_order_is_the_same_after_a_restart(self, server):
        self.create_five(server)
        server.clock.advance(-3600)
        server.create(name="created after the clock stepped back")

        before = [item["id"] for item in server.list().json["items"]]
        after = [item["id"] for item in server.reopen().list().json["items"]]

        assert before == after

    def test_list_items_show_the_request_as_url_and_method_only(self, server):
        server.create(request={"method": "post", "headers": {"Authorization": "Bearer secret"},
                               "body": "secret body", "timeout": 5, "follow_redirects": True})

        item = server.list().json["items"][0]

        assert item["request"] == {"url": "https://api.example.com/reports/daily", "method": "POST"}
        assert b"secret" not in server.list().body

    def test_list_items_carry_the_documented_fields(self, server):
        created = server.create(name="Weekday morning report")
        server.create(enabled=False)

        enabled_item, disabled_item = reversed(server.list().json["items"])

        assert {"id", "cron", "enabled", "created_at", "last_run", "name", "next_run", "request"} <= set(
            enabled_item)
        assert enabled_item["id"] == created["id"]
        assert enabled_item["name"] == "Weekday morning report"
        assert enabled_item["last_run"] is None
        assert enabled_item["next_run"] == "2025-01-16T09:00:00Z"
        assert disabled_item["enabled"] is False
        assert disabled_item["next_run"] is None

    @pytest.mark.parametrize("count", [1, 2, 7])
    def test_without_a_limit_every_schedule_is_on_page_1_and_meta_limit_is_the_total(self, server, count):
        for n in range(count):
            server.create(name=f"schedule {n}")

        body = server.list().json

        assert len(body["items"]) == count
        assert body["meta"] == {"page": 1, "limit": count, "total": count}

    def test_without_a_limit_meta_limit_is_1_when_there_is_nothing_so_a_client_may_divide_by_it(self, server):
        created = server.create()
        server.delete(created["id"])

        for query in ("", "?page=1", "?page=2"):
            meta = server.list(query).json["meta"]
            assert meta["limit"] == 1
            assert meta["total"] == 0

    @pytest.mark.parametrize("query, positions, meta", [
        ("?limit=2", [4, 3], {"page": 1, "limit": 2, "total": 5}),
        ("?page=1&limit=2", [4, 3], {"page": 1, "limit": 2, "total": 5}),
        ("?page=2&limit=2", [2, 1], {"page": 2, "limit": 2, "total": 5}),
        ("?page=3&limit=2", [0], {"page": 3, "limit": 2, "total": 5}),
        ("?page=1&limit=1000", [4, 3, 2, 1, 0], {"page": 1, "limit": 1000, "total": 5}),
        ("?page=1", [4, 3, 2, 1, 0], {"page": 1, "limit": 5, "total": 5}),
    ])
    def test_it_pages_with_page_and_limit(self, server, query, positions, meta):
        ids = self.create_five(server)

        body = server.list(query).json

        assert [item["id"] for item in body["items"]] == [ids[p] for p in positions]
        assert body["meta"] == meta

    @pytest.mark.parametrize("query, meta", [
        ("?page=4&limit=2", {"page": 4, "limit": 2, "total": 5}),
        ("?page=99&limit=1000", {"page": 99, "limit": 1000, "total": 5}),
        ("?page=2", {"page": 2, "limit": 5, "total": 5}),        # omitted limit: everything is on page 1
    ])
    def test_a_page_beyond_the_last_is_empty(self, server, query, meta):
        self.create_five(server)

        body = server.list(query).json

        assert body["items"] == []
        assert body["meta"] == meta

    @pytest.mark.parametrize("query, name", [
        ("?page=0", "page"), ("?page=-1", "page"), ("?page=abc", "page"), ("?page=1.5", "page"),
        ("?page=", "page"), ("?page=1&page=2", "page"),
        ("?limit=0", "limit"), ("?limit=-1", "limit"), ("?limit=abc", "limit"), ("?limit=1001", "limit"),
        ("?limit=1.5", "limit"), ("?limit=", "limit"), ("?page=1&limit=1e3", "limit"),
    ])
    def test_a_bad_page_or_limit_answers_400_invalid_parameter_naming_it(self, server, query, name):
        server.create()

        assert_error(server.list(query), 400, "INVALID_PARAMETER", name)


###############################################################################
# Get ##########################################################################
###############################################################################

class TestGet:
    def test_it_shows_the_whole_request_including_headers(self, server):
        created = server.create(name="Report", request={
            "method": "POST", "headers": {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9"},
            "json": {"report": "daily"}, "timeout": 10, "follow_redirects": True})

        response = server.get(created["id"])

        assert response.status_int == 200
        assert response.content_type == "application/json"
        body = response.json
        assert body["id"] == created["id"]
        assert body["cron"] == "0 0 9 * * MON-FRI"
        assert body["enabled"] is True
        assert body["created_at"] == "2025-01-15T10:30:00Z"
        assert body["name"] == "Report"
        assert body["timezone"] == "UTC"
        assert body["next_run"] == "2025-01-16T09:00:00Z"
        assert body["last_run"] is None
        assert body["request"] == {"url": "https://api.example.com/reports/daily", "method": "POST",
                                   "headers": {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9"},
                                   "json": {"report": "daily"}, "timeout": 10, "follow_redirects": True}

    def test_a_schedule_that_never_ran_has_no_last_status_and_an_empty_history(self, server):
        created = server.create()

        body = server.get(created["id"]).json

        assert body["last_status"] is None
        assert body["history"] == []

    def test_it_shows_each_run_newest_first_with_the_documented_fields(self, server):
        created = server.create(cron="* * * * * *")
        server.runner.script = [("ok", 200, None), ("error", 503, "HTTP 503 Service Unavailable")]

        server.pass_seconds(2)
        body = server.get(created["id"]).json

        assert body["last_status"] == "error"
        assert body["last_run"] == "2025-01-15T10:30:02Z"
        newest, oldest = body["history"]
        assert set(newest) == HISTORY_KEYS
        assert str(uuid.UUID(newest["run_id"])) == newest["run_id"]
        assert newest["run_id"] != oldest["run_id"]
        assert {k: v for k, v in newest.items() if k != "run_id"} == {
            "scheduled_at": "2025-01-15T10:30:02Z", "started_at": "2025-01-15T10:30:02Z", "status": "error",
            "status_code": 503, "duration_ms": 12, "error": "HTTP 503 Service Unavailable"}
        assert {k: v for k, v in oldest.items() if k != "run_id"} == {
            "scheduled_at": "2025-01-15T10:30:01Z", "started_at": "2025-01-15T10:30:01Z", "status": "ok",
            "status_code": 200, "duration_ms": 12, "error": None}

    def test_it_keeps_the_newest_20_runs(self, server):
        created = server.create(cron="* * * * * *")

        server.pass_seconds(25)
        history = server.get(created["id"]).json["history"]

        assert len(server.runner.runs) == 25
        assert len(history) == 20
        assert history[0]["scheduled_at"] == iso(NOW - 0.75 + 25)
        assert history[-1]["scheduled_at"] == iso(NOW - 0.75 + 6)
        assert [h["scheduled_at"] for h in history] == sorted((h["scheduled_at"] for h in history), reverse=True)

    def test_a_run_skipped_because_the_previous_one_is_still_running_shows_in_history(self, server):
        created = server.create(cron="* * * * * *")
        server.runner.hold = True
        server.pass_seconds(1)                          # the 10:30:01 run starts and stays in flight

        server.pass_seconds(1)                          # due again while the first is in flight
        assert server.runner.release() == 1
        history = server.get(created["id"]).json["history"]

        assert [h["status"] for h in history] == ["ok", "skipped"]
        skipped = history[1]
        assert HISTORY_KEYS <= set(skipped)
        assert skipped["scheduled_at"] == "2025-01-15T10:30:02Z"
        assert skipped["started_at"] is None
        assert skipped["status_code"] is None

    def test_fires_missed_beyond_the_grace_show_in_history_as_missed(self, server):
        created = server.create(cron="* * * * * *")

        server.clock.advance(120)                       # e.g. the machine was suspended
        server.run_due()
        history = server.get(created["id"]).json["history"]

        assert [h["status"] for h in history] == ["ok", "missed"]
        assert HISTORY_KEYS <= set(history[1])
        assert history[1]["started_at"] is None
        assert (history[1]["scheduled_at"], history[1]["count"]) == ("2025-01-15T10:30:01Z", 119)
        assert history[0]["scheduled_at"] == "2025-01-15T10:32:00Z"     # the latest slot, within the grace
        assert len(server.runner.runs) == 1            # no burst of catch-up requests

    def test_list_shows_the_last_run_too(self, server):
        server.create(cron="* * * * * *")

        server.pass_seconds(3)

        assert server.list().json["items"][0]["last_run"] == "2025-01-15T10:30:03Z"

    @pytest.mark.parametrize("schedule_id", [
        "a1b2c3d4-e5f6-7890-abcd-ef1234567890",         # well-formed, unknown
        "nope", "..", "%20", "0" * 300, "a1b2c3d4e5f67890abcdef1234567890",
        "{a1b2c3d4-e5f6-7890-abcd-ef1234567890}",
    ])
    def test_an_unknown_or_malformed_id_answers_404_schedule_not_found(self, server, schedule_id):
        server.create()

        assert_error(server.get(schedule_id), 404, "SCHEDULE_NOT_FOUND")

    def test_the_id_is_matched_exactly_not_case_insensitively(self, server):
        created = server.create()

        assert_error(server.get(created["id"].upper()), 404, "SCHEDULE_NOT_FOUND")

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(schedule_id=st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=60))
    def test_any_id_that_is_not_ours_answers_404_schedule_not_found(self, server, schedule_id):
        response = server.get(urllib.parse.quote(schedule_id, safe=""))

        assert_error(response, 404, "SCHEDULE_NOT_FOUND")


SECRET_REQUEST = {"method": "POST", "headers": {"Authorization": "Bearer s3cret-header", "X-Trace": "t-1"},
                  "timeout": 10, "follow_redirects": True}


class TestReadOnlyView:
    """A read-only token sees what a schedule does, not the secrets it sends: header values and the body."""

    @pytest.mark.parametrize("payload", [{"json": {"password": "s3cret-json"}}, {"body": "s3cret-body"}],
                             ids=["json", "body"])
    def test_a_read_only_token_sees_header_names_with_redacted_values_and_a_redacted_body(self, server, payload):
        created = server.create(request={**SECRET_REQUEST, **payload})
        (field,) = payload

        response = server.get(created["id"], headers=READER)

        assert response.status_int == 200
        assert response.json["request"] == {
            "url": "https://api.example.com/reports/daily", "method": "POST",
            "headers": {"Authorization": "[redacted]", "X-Trace": "[redacted]"}, field: "[redacted]",
            "timeout": 10, "follow_redirects": True}
        assert b"s3cret" not in response.body
        assert b"t-1" not in response.body

    @pytest.mark.parametrize("payload", [{"json": {"password": "s3cret-json"}}, {"body": "s3cret-body"}],
                             ids=["json", "body"])
    def test_an_admin_token_sees_the_whole_request(self, server, payload):
        created = server.create(request={**SECRET_REQUEST, **payload})

        server.get(created["id"], headers=READER)       # redacting a view changes nothing stored
        response = server.get(created["id"], headers=ADMIN)

        assert response.json["request"] == {"url": "https://api.example.com/reports/daily",
                                             **SECRET_REQUEST, **payload}

    def test_a_request_without_headers_or_body_reads_the_same_for_both_tokens(self, server):
        created = server.create()

        as_reader = server.get(created["id"], headers=READER).json
        as_admin = server.get(created["id"], headers=ADMIN).json

        assert as_reader == as_admin
        assert as_reader["request"]["headers"] == {}
        assert "body" not in as_reader["request"] and "json" not in as_reader["request"]

    def test_everything_but_the_request_secrets_is_the_same_for_a_read_only_token(self, server):
        created = server.create(cron="* * * * * *", request={**SECRET_REQUEST, "body": "s3cret-body"})
        server.pass_seconds(2)

        as_reader = server.get(created["id"], headers=READER).json
        as_admin = server.get(created["id"], headers=ADMIN).json

        assert {k: v for k, v in as_reader.items() if k != "request"} == \
            {k: v for k, v in as_admin.items() if k != "request"}
        assert len(as_reader["history"]) == 2

    def test_the_list_shows_no_secrets_to_a_read_only_token(self, server):
        server.create(request={**SECRET_REQUEST, "body": "s3cret-body"})

        response = server.list(headers=READER)

        assert response.json["items"][0]["request"] == {"url": "https://api.example.com/reports/daily",
                                                        "method": "POST"}
        assert b"s3cret" not in response.body


###############################################################################
# Toggle #######################################################################
###############################################################################

class TestToggle:
    def test_enabled_false_disables_and_clears_next_run(self, server):
        created = server.create()

        response = server.toggle(created["id"], {"enabled": False})

        assert response.status_int == 200
        assert response.content_type == "application/json"
        assert response.json["id"] == created["id"]
        assert response.json["enabled"] is False
        assert response.json.get("next_run") is None
        shown = server.get(created["id"]).json
        assert shown["enabled"] is False
        assert shown["next_run"] is None
        assert len(server.scheduler) == 0

    def test_a_disabled_schedule_does_not_fire(self, server):
        created = server.create(cron="* * * * * *")
        server.toggle(created["id"], {"enabled": False})

        server.pass_seconds(5)

        assert server.runner.runs == []
        assert server.get(created["id"]).json["history"] == []

    def test_enabled_true_enables_a_disabled_schedule(self, server):
        created = server.create(enabled=False)

        response = server.toggle(created["id"], {"enabled": True})

        assert response.status_int == 200
        assert response.json["id"] == created["id"]
        assert response.json["enabled"] is True
        shown = server.get(created["id"]).json
        assert shown["enabled"] is True
        assert shown["next_run"] == "2025-01-16T09:00:00Z"

    def test_re_enabling_computes_the_next_run_from_now_without_catching_up(self, server):
        created = server.create(cron="0 * * * * *")
        server.toggle(created["id"], {"enabled": False})
        server.clock.advance(3 * 3600)                  # 13:30:00.75

        server.toggle(created["id"], {"enabled": True})

        assert server.get(created["id"]).json["next_run"] == "2025-01-15T13:31:00Z"
        assert server.run_due() == 0
        assert server.get(created["id"]).json["history"] == []

    @pytest.mark.parametrize("enabled", [True, False])
    def test_asking_for_the_current_state_changes_nothing(self, server, enabled):
        created = server.create(enabled=enabled)
        before = server.get(created["id"]).json

        response = server.toggle(created["id"], {"enabled": enabled})

        assert response.status_int == 200
        assert response.json["enabled"] is enabled
        assert server.get(created["id"]).json == before

    def test_an_empty_body_flips_the_state(self, server):
        created = server.create()

        first = server.toggle(created["id"])
        second = server.toggle(created["id"])

        assert first.status_int == 200 and first.json["enabled"] is False
        assert second.status_int == 200 and second.json["enabled"] is True
        assert server.get(created["id"]).json["enabled"] is True

    @pytest.mark.parametrize("body", [{"enabled": "yes"}, {"enabled": 1}, {"enabled": None}, {"x": 1},
                                      {"enabled": True, "x": 1}, [], [True], 5, "true", True])
    def test_any_other_body_answers_400_invalid_parameter(self, server, body):
        created = server.create()

        assert_error(server.toggle(created["id"], body), 400, "INVALID_PARAMETER", "enabled")
        assert server.get(created["id"]).json["enabled"] is True

    def test_a_body_that_is_not_json_answers_400_invalid_parameter(self, server):
        created = server.create()

        response = server.app.patch(f"{BASE}/{created['id']}/toggle", b"{enabled: false", headers=ADMIN,
                                    content_type="application/json", expect_errors=True)

        assert_error(response, 400, "INVALID_PARAMETER", "JSON")

    def test_a_body_over_one_mebibyte_answers_413_in_json(self, server):
        created = server.create()
        raw = b'{"enabled": false}' + b" " * schedserver.MAX_BODY_BYTES

        response = server.app.patch(f"{BASE}/{created['id']}/toggle", raw, headers=ADMIN,
                                    content_type="application/json", expect_errors=True)

        assert_error(response, 413, "PAYLOAD_TOO_LARGE")
        assert server.get(created["id"]).json["enabled"] is True

    def test_an_unknown_id_answers_404_schedule_not_found(self, server):
        assert_error(server.toggle("a1b2c3d4-e5f6-7890-abcd-ef1234567890", {"enabled": False}), 404,
                     "SCHEDULE_NOT_FOUND", "Schedule not found")

    @pytest.mark.parametrize("schedule_id", ["nope", "..", "12345"])
    def test_a_malformed_id_answers_404_schedule_not_found(self, server, schedule_id):
        assert_error(server.toggle(schedule_id, {"enabled": False}), 404, "SCHEDULE_NOT_FOUND")

    def test_an_unknown_id_answers_404_even_with_a_bad_body(self, server):
        assert_error(server.toggle("nope", {"enabled": "yes"}), 404, "SCHEDULE_NOT_FOUND")


###############################################################################
# Delete #######################################################################
###############################################################################

class TestDelete:
    def test_it_answers_with_the_id_and_the_schedule_is_gone(self, server):
        created = server.create()
        kept = server.create()

        response = server.delete(created["id"])

        assert response.status_int == 200
        assert response.content_type == "application/json"
        assert response.json == {"id": created["id"]}
        assert_error(server.get(created["id"]), 404, "SCHEDULE_NOT_FOUND")
        assert [item["id"] for item in server.list().json["items"]] == [kept["id"]]

    def test_deleting_twice_answers_404_the_second_time(self, server):
        created = server.create()
        server.delete(created["id"])

        assert_error(server.delete(created["id"]), 404, "SCHEDULE_NOT_FOUND", "Schedule not found")
        assert_error(server.toggle(created["id"], {"enabled": True}), 404, "SCHEDULE_NOT_FOUND")

    def test_a_deleted_schedule_stops_firing(self, server):
        created = server.create(cron="* * * * * *")
        server.pass_seconds(1)

        server.delete(created["id"])
        server.pass_seconds(5)

        assert len(server.runner.runs) == 1
        assert len(server.scheduler) == 0

    @pytest.mark.parametrize("schedule_id", ["a1b2c3d4-e5f6-7890-abcd-ef1234567890", "nope", ".."])
    def test_an_unknown_or_malformed_id_answers_404_schedule_not_found(self, server, schedule_id):
        assert_error(server.delete(schedule_id), 404, "SCHEDULE_NOT_FOUND")


class TestIdsThatContainASlash:
    """An id is one path segment; `../x` sent percent-encoded is still just an id that does not exist."""

    ENCODED = urllib.parse.quote("../x", safe="")        # ..%2Fx

    def test_get_answers_404_schedule_not_found(self, server):
        assert_error(server.get(self.ENCODED), 404, "SCHEDULE_NOT_FOUND")

    def test_toggle_answers_404_schedule_not_found(self, server):
        assert_error(server.toggle(self.ENCODED, {"enabled": False}), 404, "SCHEDULE_NOT_FOUND")

    def test_delete_answers_404_schedule_not_found(self, server):
        assert_error(server.delete(self.ENCODED), 404, "SCHEDULE_NOT_FOUND")


###############################################################################
# Auth #########################################################################
###############################################################################

EXISTING = "existing"       # replaced by a real schedule id in the tests below


def call(server: Api, method: str, path: str, headers: dict, schedule_id: str):
    url = BASE + path.replace(EXISTING, schedule_id)
    if method == "POST":
        return server.app.post_json(url, valid_create_body(), headers=headers, expect_errors=True)
    if method == "PATCH":
        return server.app.patch_json(url, {"enabled": False}, headers=headers, expect_errors=True)
    return server.app.request(url, method=method, headers=headers, expect_errors=True)


ROUTES = [("GET", ""), ("POST", ""), ("GET", f"/{EXISTING}"), ("PATCH", f"/{EXISTING}/toggle"),
          ("DELETE", f"/{EXISTING}"), ("GET", "/nope"), ("PATCH", "/nope/toggle"), ("DELETE", "/nope")]
MUTATING = [("POST", ""), ("PATCH", f"/{EXISTING}/toggle"), ("DELETE", f"/{EXISTING}")]
READING = [("GET", ""), ("GET", f"/{EXISTING}")]


class TestAuth:
    @pytest.mark.parametrize("method, path", ROUTES)
    @pytest.mark.parametrize("headers", [
        {}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong-token"}, {"Authorization": "Bearer admin-token-and-more"},
        {"Authorization": "Bearer admin"}, {"Authorization": "admin-token"},
        {"Authorization": "Basic YWRtaW46YWRtaW4tdG9rZW4="}, {"Authorization": "Token admin-token"},
        {"X-Api-Key": "admin-token"},
    ], ids=["none", "empty", "scheme-only", "scheme-space", "wrong", "longer", "prefix", "no-scheme", "basic",
            "token-scheme", "other-header"])
    def test_without_a_valid_bearer_token_every_route_answers_401(self, server, method, path, headers):
        created = server.create()

        response = call(server, method, path, headers, created["id"])

        assert_error(response, 401, "UNAUTHORIZED")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert server.get(created["id"]).json["enabled"] is True
        assert server.http.count() == 1

    @pytest.mark.parametrize("method, path", READING)
    def test_a_read_only_token_may_call_get_routes(self, server, method, path):
        created = server.create()

        response = call(server, method, path, READER, created["id"])

        assert response.status_int == 200

    @pytest.mark.parametrize("method, path", MUTATING)
    def test_a_read_only_token_is_forbidden_on_mutating_routes(self, server, method, path):
        created = server.create()
        before = server.list().json

        response = call(server, method, path, READER, created["id"])

        assert_error(response, 403, "FORBIDDEN")
        assert "WWW-Authenticate" not in response.headers
        assert server.list().json == before

    @pytest.mark.parametrize("method, path, status", [
        ("GET", "", 200), ("POST", "", 201), ("GET", f"/{EXISTING}", 200), ("PATCH", f"/{EXISTING}/toggle", 200),
        ("DELETE", f"/{EXISTING}", 200)])
    def test_an_admin_token_may_call_every_route(self, server, method, path, status):
        created = server.create()

        assert call(server, method, path, ADMIN, created["id"]).status_int == status

    def test_the_bearer_scheme_is_case_insensitive(self, server):
        assert server.list(headers={"Authorization": "bearer admin-token"}).status_int == 200

    def test_the_token_is_never_echoed_in_an_error(self, server):
        response = server.list(headers={"Authorization": "Bearer not-the-token-123"})

        assert b"not-the-token-123" not in response.body


###############################################################################
# Unknown routes, wrong methods, unexpected errors #############################
###############################################################################

class TestRouterErrors:
    @pytest.mark.parametrize("path", ["/nope", "/api/v1/nope", "/api/v1", "/api/v1/curl", "/api/v1/curl/schedules",
                                      "/favicon.ico"])
    def test_an_unknown_route_answers_404_in_json(self, server, path):
        assert_error(server.app.get(path, headers=ADMIN, expect_errors=True), 404, "NOT_FOUND")

    def test_a_path_below_a_schedule_id_answers_404_in_json(self, server):
        """After WSGI decoding, `/<id>/nope` cannot be told from the id `<id>/nope`: either 404 code fits."""
        response = server.app.get(f"{BASE}/a1b2c3d4-e5f6-7890-abcd-ef1234567890/nope", headers=ADMIN,
                                  expect_errors=True)

        assert response.status_int == 404
        assert response.json["error"] in ("NOT_FOUND", "SCHEDULE_NOT_FOUND")
        assert_error(response, 404, response.json["error"])

    @pytest.mark.parametrize("method, path", [
        ("PUT", ""), ("DELETE", ""), ("PATCH", ""),
        ("POST", "/a1b2c3d4-e5f6-7890-abcd-ef1234567890"), ("PUT", "/a1b2c3d4-e5f6-7890-abcd-ef1234567890"),
        ("GET", "/a1b2c3d4-e5f6-7890-abcd-ef1234567890/toggle"),
        ("POST", "/a1b2c3d4-e5f6-7890-abcd-ef1234567890/toggle"),
    ])
    def test_a_wrong_method_answers_405_in_json(self, server, method, path):
        response = server.app.request(BASE + path, method=method, headers=ADMIN, expect_errors=True)

        assert_error(response, 405, "METHOD_NOT_ALLOWED", method)

    def test_a_405_names_the_allowed_methods(self, server):
        response = server.app.put(BASE, headers=ADMIN, expect_errors=True)

        assert set(response.headers["Allow"].split(",")) == {"GET", "POST"}

    @pytest.mark.parametrize("path", [BASE, f"{BASE}/a1b2c3d4-e5f6-7890-abcd-ef1234567890"])
    def test_an_unexpected_exception_answers_500_internal_error_without_a_traceback(self, server, monkeypatch,
                                                                                     path):
        explode(server, monkeypatch)

        response = server.app.get(path, headers=ADMIN, expect_errors=True)

        assert_error(response, 500, "INTERNAL_ERROR")
        assert b"secret-internal-detail" not in response.body
        assert b"File \"" not in response.body

    def test_the_server_keeps_serving_after_an_unexpected_exception(self, server, monkeypatch):
        explode(server, monkeypatch)
        server.app.get(BASE, headers=ADMIN, expect_errors=True)

        assert server.post(valid_create_body()).status_int == 201


def explode(server: Api, monkeypatch) -> None:
    """Give the service a bug: listing or getting raises something no route expects."""
    def list_(page=1, limit=None):
        raise RuntimeError("secret-internal-detail in list")

    def get(schedule_id, redact=False):
        raise KeyError("secret-internal-detail in get")

    monkeypatch.setattr(server.http, "list", list_)
    monkeypatch.setattr(server.http, "get", get)


###############################################################################
# Unknown query parameters #####################################################
###############################################################################

class TestUnknownQueryParameters:
    """Every route answers an unknown query parameter with 400 (a misspelt `limt` must not be ignored), and
    does nothing else."""

    @pytest.mark.parametrize("query, name", [
        ("?colour=blue", "colour"), ("?limt=2", "limt"), ("?Page=2", "Page"), ("?page=1&limit=2&sort=name", "sort"),
        ("?offset=0", "offset"), ("?x", "x"),
    ])
    def test_the_list_answers_400_invalid_parameter_naming_it(self, server, query, name):
        server.create()

        assert_error(server.list(query), 400, "INVALID_PARAMETER", name)
        assert_error(server.list(query, headers=READER), 400, "INVALID_PARAMETER", name)

    def test_create_answers_400_and_creates_nothing(self, server):
        assert_error(server.post(valid_create_body(), query="?dry_run=true"), 400, "INVALID_PARAMETER", "dry_run")

        assert server.http.count() == 0
        assert len(server.scheduler) == 0
        assert store_files(server.data_dir) == {"curl-schedules.json": None, "curl-schedules.journal": None}

    def test_get_answers_400(self, server):
        created = server.create()

        assert_error(server.get(created["id"], query="?history=5"), 400, "INVALID_PARAMETER", "history")
        assert_error(server.get(created["id"], headers=READER, query="?reveal=1"), 400, "INVALID_PARAMETER",
                     "reveal")

    def test_toggle_answers_400_and_changes_nothing(self, server):
        created = server.create()

        assert_error(server.toggle(created["id"], {"enabled": False}, query="?force=1"), 400, "INVALID_PARAMETER",
                     "force")
        assert_error(server.toggle(created["id"], query="?enabled=false"), 400, "INVALID_PARAMETER", "enabled")

        assert server.get(created["id"]).json["enabled"] is True
        assert server.scheduler.next_at("http:" + created["id"]) is not None

    def test_delete_answers_400_and_deletes_nothing(self, server):
        created = server.create()

        assert_error(server.delete(created["id"], query="?cascade=true"), 400, "INVALID_PARAMETER", "cascade")

        assert server.get(created["id"]).status_int == 200
        assert server.http.count() == 1

    @pytest.mark.parametrize("method, path", [("GET", "/a1b2c3d4-e5f6-7890-abcd-ef1234567890"),
                                              ("PATCH", "/a1b2c3d4-e5f6-7890-abcd-ef1234567890/toggle"),
                                              ("DELETE", "/a1b2c3d4-e5f6-7890-abcd-ef1234567890")])
    def test_an_unknown_parameter_is_refused_before_the_id_is_looked_up(self, server, method, path):
        response = server.app.request(BASE + path + "?x=1", method=method, headers=ADMIN, expect_errors=True)

        assert_error(response, 400, "INVALID_PARAMETER", "x")

    def test_known_parameters_still_work_beside_the_check(self, server):
        server.create()

        assert server.list("?page=1&limit=1").json["meta"] == {"page": 1, "limit": 1, "total": 1}


###############################################################################
# Storage failures #############################################################
###############################################################################

FAULTS = [OSError(errno.ENOSPC, "No space left on device"), PermissionError(errno.EACCES, "Permission denied"),
          OSError(errno.EIO, "Input/output error")]


class TestStorageFailures:
    @pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: errno.errorcode[fault.errno])
    def test_create_answers_500_schedule_creation_failed_and_keeps_nothing(self, server, fault):
        existing = server.create()
        before = server.list().json
        on_disk, stored, held = store_files(server.data_dir), stored_definitions(server.data_dir), server.store.items()
        server.fail_writes(fault)

        response = server.post(valid_create_body(cron="* * * * * *"))

        assert_error(response, 500, "SCHEDULE_CREATION_FAILED")
        assert server.list().json == before
        assert len(server.scheduler) == 1
        assert server.store.items() == held
        assert store_files(server.data_dir) == on_disk
        assert stored_definitions(server.data_dir) == stored
        assert server.get(existing["id"]).status_int == 200

    @pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: errno.errorcode[fault.errno])
    def test_toggle_answers_500_storage_error_and_keeps_the_state(self, server, fault):
        created = server.create()
        before = server.get(created["id"]).json
        server.fail_writes(fault)

        response = server.toggle(created["id"], {"enabled": False})

        assert_error(response, 500, "STORAGE_ERROR")
        assert server.get(created["id"]).json == before
        assert server.scheduler.next_at("http:" + created["id"]) is not None

    def test_a_failed_toggle_of_a_disabled_schedule_leaves_it_unregistered(self, server):
        created = server.create(enabled=False)
        server.fail_writes(OSError(5, "Input/output error"))

        assert_error(server.toggle(created["id"]), 500, "STORAGE_ERROR")

        assert server.get(created["id"]).json["enabled"] is False
        assert len(server.scheduler) == 0

    @pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: errno.errorcode[fault.errno])
    def test_delete_answers_500_storage_error_and_keeps_the_schedule(self, server, fault):
        created = server.create(cron="* * * * * *")
        before = server.list().json
        server.fail_writes(fault)

        response = server.delete(created["id"])

        assert_error(response, 500, "STORAGE_ERROR")
        assert server.list().json == before
        server.fail_writes(None)
        server.pass_seconds(1)
        assert len(server.runner.runs) == 1            # still registered and firing

    def test_the_storage_error_message_does_not_leak_the_os_error(self, server):
        created = server.create()
        server.fail_writes(OSError(28, "No space left on device: /secret/path"))

        for response in (server.post(valid_create_body()), server.toggle(created["id"]),
                         server.delete(created["id"])):
            assert b"/secret/path" not in response.body

    def test_writes_work_again_once_the_fault_clears(self, server):
        created = server.create()
        server.fail_writes(OSError(28, "No space left on device"))
        server.post(valid_create_body())
        server.toggle(created["id"], {"enabled": False})
        server.delete(created["id"])
        server.fail_writes(None)

        second = server.create(name="second")
        assert server.toggle(created["id"], {"enabled": False}).json["enabled"] is False
        assert server.delete(created["id"]).json == {"id": created["id"]}

        assert [item["id"] for item in server.list().json["items"]] == [second["id"]]
        restarted = server.reopen()
        assert [item["id"] for item in restarted.list().json["items"]] == [second["id"]]

    def test_reads_keep_working_while_the_store_is_failing(self, server):
        created = server.create()
        server.fail_writes(OSError(28, "No space left on device"))

        assert server.list().status_int == 200
        assert server.get(created["id"]).status_int == 200


###############################################################################
# Persistence ##################################################################
###############################################################################

class TestPersistence:
    def test_a_restart_shows_the_same_schedules_in_the_same_state(self, server):
        report = server.create(name="report", request={"method": "POST", "headers": {"Authorization": "Bearer s"},
                                                       "body": "payload", "timeout": 7})
        server.clock.advance(1)
        paused = server.create(name="paused", cron="@hourly", timezone="Europe/Berlin")
        server.clock.advance(1)
        resumed = server.create(name="resumed", enabled=False, cron="*/5 * * * *")
        server.clock.advance(1)
        doomed = server.create(name="doomed")
        server.toggle(paused["id"], {"enabled": False})
        server.toggle(resumed["id"])
        server.delete(doomed["id"])
        before_list = server.list().json
        before_each = {s["id"]: server.get(s["id"]).json for s in (report, paused, resumed)}

        restarted = server.reopen()

        assert restarted.list().json == before_list
        for schedule_id, before in before_each.items():
            assert restarted.get(schedule_id).json == before
        assert [item["enabled"] for item in before_list["items"]] == [True, False, True]
        assert_error(restarted.get(doomed["id"]), 404, "SCHEDULE_NOT_FOUND")

    def test_run_history_survives_a_restart(self, server):
        created = server.create(cron="* * * * * *")
        server.runner.script = [("ok", 200, None), ("timeout", None, "timed out after 30 s")]
        server.pass_seconds(2)
        before = server.get(created["id"]).json

        restarted = server.reopen()
        after = restarted.get(created["id"]).json

        assert after["history"] == before["history"]
        assert after["last_status"] == "timeout"
        assert after["last_run"] == before["last_run"]

    def test_a_restarted_server_keeps_firing(self, server):
        server.create(cron="* * * * * *")
        server.pass_seconds(1)

        restarted = server.reopen()
        restarted.pass_seconds(2)

        assert len(restarted.runner.runs) == 2

    def test_the_schedules_snapshot_and_journal_are_private(self, server):
        created = server.create(request={"headers": {"Authorization": "Bearer secret"}})
        server.store.compact()                          # writes the snapshot and rewrites the journal
        server.toggle(created["id"])                    # appends to the rewritten journal

        modes = {name: stat.S_IMODE(os.stat(server.data_dir / name).st_mode)
                 for name in ("curl-schedules.json", "curl-schedules.journal")}

        assert modes == {"curl-schedules.json": 0o600, "curl-schedules.journal": 0o600}
        assert b"Bearer secret" in (server.data_dir / "curl-schedules.json").read_bytes()

    def test_the_runs_log_is_private(self, server):
        server.create(cron="* * * * * *")
        server.pass_seconds(1)

        assert stat.S_IMODE(os.stat(server.runs_log.path).st_mode) == 0o600

    @pytest.mark.parametrize("compacted", [False, True], ids=["journal-only", "snapshot-and-journal"])
    def test_the_schedules_files_are_written_only_when_definitions_change(self, server, compacted):
        created = server.create(cron="* * * * * *")
        if compacted:
            server.store.compact()
        written = store_file_stamps(server.data_dir)
        assert written["curl-schedules.journal"] is not None
        assert (written["curl-schedules.json"] is not None) == compacted

        server.pass_seconds(3)
        server.toggle(created["id"], {"enabled": True})   # already enabled: nothing to write
        server.list()
        server.get(created["id"])

        assert len(server.runner.runs) == 3
        assert store_file_stamps(server.data_dir) == written

"""Quiet alerts by webhook, both surfaces (issue 16, item 10).

Grouped by concern: the transitions Alerts.decide makes (unit, over a real RunState); the same through the whole
run path in process (tests/harness.py's Stack: fake clock, scripted HTTP runner, real scripts, a fake sender that
keeps what would be posted) including restarts in the middle of a failure streak and the server-wide [notify]
default; the AlertSender against a real loopback receiver (retries, logging without secrets, the egress policy,
the outbox); and end to end with the real server process, a real loopback target and a real loopback webhook
receiver. Every wait has a deadline; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import CURL_PATH, ServerProcess, TargetServer, wait_until
from fakes import FakeClock
from harness import ADMIN, Stack

import schedserver

NOW = "2025-01-10T12:00:30Z"
MINUTELY = "0 * * * * *"                # second 0 of every minute: pass_seconds(60) from :30 is one slot
NEVER = "0 0 1 1 *"
EXEC = "/api/v1/exec/schedules"
PAYLOAD_FIELDS_HTTP = {"event", "kind", "schedule_id", "name", "run_id", "status", "error", "consecutive_failures",
                       "at"}
PAYLOAD_FIELDS_SCRIPT = PAYLOAD_FIELDS_HTTP - {"schedule_id"} | {"scriptPath"}
FAIL = ("error", 500, "HTTP 500 Internal Server Error")
OK = ("ok", 200, None)
TIMEOUT = ("timeout", None, "timed out after 30 s")
HOOK = "https://hooks.example.com/schedserver?key=s3cret"


def wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return bool(condition())
        time.sleep(0.01)
    return True


###############################################################################
# Alerts.decide: the transitions ##############################################
###############################################################################

class Streak:
    """One schedule's runs ending, one after another, as the recorder sees them: decide(), then the record (with
    what was decided) taken into the run state."""

    def __init__(self, tmp_path: Path, notify: schedserver.Notify | None = None,
                 default: schedserver.Notify | None = None, kind: str = "http"):
        self.state = schedserver.RunState(str(tmp_path / "run-state.json"), {})
        self.alerts = schedserver.Alerts(self.state, None, default)
        target = schedserver.HttpTarget({"url": "http://target.example/x", "method": "GET"}) if kind == "http" \
            else schedserver.ScriptTarget("job.sh", str(tmp_path / "job.sh"), ("/bin/sh",), 1000, str(tmp_path))
        self.job = schedserver.Job(key=schedserver.job_key(kind, "s1"), kind=kind, ref="s1",
                                   cron=schedserver.parse_cron(MINUTELY), tz=schedserver.load_timezone("UTC"),
                                   target=target, notify=notify, name="job")
        self.kind = kind
        self.at = schedserver.parse_iso(NOW)

    def end(self, status: str, final: bool = True) -> dict:
        decided = self.alerts.decide(self.job, status, final)
        self.at += 60
        run = {"run_id": f"run-{self.at:.0f}", "slot": self.at, "trigger": "cron", "attempt": 1,
               "started": self.at, "status": status, "duration_ms": 5, "ref": "s1", "expression": MINUTELY,
               "now": self.at, **decided}
        self.state.apply(self.kind, schedserver.format_record(self.kind, run))
        return decided

    def events(self, *statuses: str) -> list[list[str]]:
        return [self.end(status).get("alerts") or [] for status in statuses]


def notify(after: int = 1, on: tuple[str, ...] = ("failure", "recovery")) -> schedserver.Notify:
    return schedserver.Notify(HOOK, on, after)


def test_decide_tells_failure_once_at_the_nth_consecutive_failure_and_nothing_for_more(tmp_path):
    streak = Streak(tmp_path, notify(after=3))

    assert streak.events("error", "error", "error", "error", "timeout") == [[], [], ["failure"], [], []]
    assert streak.state.value(streak.job.key, "streak") == 5
    assert streak.state.value(streak.job.key, "failing") is True


def test_decide_tells_recovery_once_at_the_first_success_after_a_failure_was_told(tmp_path):
    streak = Streak(tmp_path, notify(after=1))

    assert streak.events("error", "ok", "ok", "error", "error", "ok") == [
        ["failure"], ["recovery"], [], ["failure"], [], ["recovery"]]
    assert streak.state.value(streak.job.key, "streak") == 0
    assert streak.state.value(streak.job.key, "failing") is False


def test_decide_tells_no_recovery_when_the_streak_ended_before_a_failure_was_told(tmp_path):
    streak = Streak(tmp_path, notify(after=2))

    assert streak.events("error", "ok", "error", "ok", "error", "error") == [[], [], [], [], [], ["failure"]]
    decided = streak.end("ok")
    assert decided == {"streak": 0, "failing": False, "alerts": ["recovery"]}


def test_decide_tells_success_after_every_success_when_asked_and_never_otherwise(tmp_path):
    every = Streak(tmp_path / "a", notify(on=("failure", "recovery", "success")))
    only_success = Streak(tmp_path / "b", notify(on=("success",)))
    quiet = Streak(tmp_path / "c", notify())

    assert every.events("ok", "ok", "error", "ok") == [["success"], ["success"], ["failure"], ["recovery", "success"]]
    assert only_success.events("ok", "error", "error", "ok", "ok") == [["success"], [], [], ["success"], ["success"]]
    assert quiet.events("ok", "ok") == [[], []]


def test_decide_counts_timeouts_as_failures(tmp_path):
    streak = Streak(tmp_path, notify(after=2))

    assert streak.events("timeout", "error") == [[], ["failure"]]
    assert streak.end("ok")["alerts"] == ["recovery"]


def test_an_attempt_that_will_be_retried_does_not_count(tmp_path):
    streak = Streak(tmp_path, notify(after=2))
    streak.end("error")                             # a failed run: streak 1

    assert streak.alerts.decide(streak.job, "error", final=False) == {}
    assert streak.end("error", final=False) == {}   # its record carries nothing: the streak stays 1
    assert streak.state.value(streak.job.key, "streak") == 1
    assert streak.end("error") == {"streak": 2, "failing": True, "alerts": ["failure"]}


@pytest.mark.parametrize("status", ["skipped", "missed", "interrupted"])
def test_runs_that_did_not_succeed_or_fail_leave_the_streak_alone(tmp_path, status):
    streak = Streak(tmp_path, notify(after=2))
    streak.end("error")

    assert streak.end(status) == {}
    assert streak.state.value(streak.job.key, "streak") == 1
    assert streak.end("error")["alerts"] == ["failure"]


def test_without_any_notify_the_streak_is_kept_and_no_alert_is_decided(tmp_path):
    streak = Streak(tmp_path, None)

    assert [d["alerts"] for d in (streak.end("error"), streak.end("error"), streak.end("ok"))] == [None] * 3
    assert streak.state.value(streak.job.key, "streak") == 0


def test_decide_uses_the_server_default_when_the_schedule_names_no_webhook_and_its_own_otherwise(tmp_path):
    by_default = Streak(tmp_path / "a", None, default=notify(after=2))
    own = Streak(tmp_path / "b", notify(after=1), default=notify(after=2))

    assert by_default.events("error", "error") == [[], ["failure"]]
    assert own.events("error", "error") == [["failure"], []]


def test_the_streak_of_a_script_is_kept_in_its_records_as_for_http(tmp_path):
    streak = Streak(tmp_path, notify(after=2), kind="script")

    assert streak.events("error", "error", "ok") == [[], ["failure"], ["recovery"]]


###############################################################################
# Through the run path, in process ############################################
###############################################################################

class FakeSender:
    """Stands in for the AlertSender: keeps (url, payload) of every alert it is given."""

    def __init__(self, sent: list):
        self.sent = sent
        self._lock = threading.Lock()

    def send(self, url: str, payload: dict) -> None:
        with self._lock:
            self.sent.append((url, payload))


class Alerting:
    """A Stack whose alerts go to a FakeSender; `sent` lives on across reopen() and crash_and_reopen()."""

    def __init__(self, root: Path, opened: list, clock: FakeClock | None = None, sent: list | None = None,
                 **config: Any):
        self.root, self.config, self.opened = root, config, opened
        self.sent = [] if sent is None else sent
        self.stack = Stack(root, clock or FakeClock(NOW), **config)
        opened.append(self.stack)
        self.stack.server.alerts.sender = FakeSender(self.sent)

    @property
    def runner(self):
        return self.stack.http_runner

    def create(self, **fields) -> str:
        body = {"cron": MINUTELY, "request": {"url": "http://target.example/ping"}, "name": "pinger", **fields}
        response = self.stack.app.post_json(CURL_PATH, body, headers=ADMIN)
        assert response.status_int == 201, response.body
        return response.json["id"]

    def runs(self, *results: tuple) -> None:
        """One scheduled run a minute, ending with each of `results` in turn."""
        for result in results:
            self.minute(result)

    def minute(self, *results: tuple) -> None:
        """A minute passes, second by second; the runs in it (a slot's attempts, several schedules' runs) end
        with `results` in turn."""
        self.runner.script.extend(results)
        self.stack.pass_seconds(60)
        assert self.runner.script == [], "fewer runs than results"

    def events(self) -> list[str]:
        return [payload["event"] for _, payload in self.sent]

    def records(self) -> list[dict]:
        path = self.root / "data" / "curl-runs.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def reopen(self, **config: Any) -> Alerting:
        self.stack.close()
        return Alerting(self.root, self.opened, self.stack.clock, self.sent, **{**self.config, **config})

    def crash_and_reopen(self) -> Alerting:
        self.stack.crash()
        return Alerting(self.root, self.opened, self.stack.clock, self.sent, **self.config)


@pytest.fixture
def open_alerting(tmp_path):
    """Alerting stacks over tmp_path (`open_alerting(**config)`); every one (and every reopened one) is closed at
    the end of the test."""
    opened: list[Stack] = []

    def open_(**config) -> Alerting:
        return Alerting(tmp_path, opened, **config)

    yield open_
    for stack in opened:
        stack.close()


def test_after_n_consecutive_failures_exactly_one_failure_alert_is_sent_and_more_failures_send_nothing(
        open_alerting):
    alerting = open_alerting()
    sid = alerting.create(notify={"url": HOOK, "after": 3})

    alerting.runs(FAIL, FAIL)
    assert alerting.sent == []
    alerting.runs(FAIL)
    assert alerting.events() == ["failure"]
    alerting.runs(FAIL, FAIL, TIMEOUT)
    assert alerting.events() == ["failure"]

    url, payload = alerting.sent[0]
    third = alerting.records()[2]
    assert url == HOOK
    assert payload == {"event": "failure", "kind": "http", "schedule_id": sid, "name": "pinger",
                       "run_id": third["run_id"], "status": "error", "error": "HTTP 500 Internal Server Error",
                       "consecutive_failures": 3, "at": third["finished_at"]}


def test_the_first_success_after_a_failure_alert_sends_one_recovery_and_later_successes_send_nothing(
        open_alerting):
    alerting = open_alerting()
    sid = alerting.create(notify={"url": HOOK})

    alerting.runs(FAIL, FAIL, OK, OK, OK)

    assert alerting.events() == ["failure", "recovery"]
    recovery = alerting.sent[1][1]
    third = alerting.records()[2]
    assert recovery == {"event": "recovery", "kind": "http", "schedule_id": sid, "name": "pinger",
                        "run_id": third["run_id"], "status": "ok", "error": None, "consecutive_failures": 0,
                        "at": third["finished_at"]}


def test_a_success_before_the_threshold_resets_the_streak_and_sends_nothing(open_alerting):
    alerting = open_alerting()
    alerting.create(notify={"url": HOOK, "after": 2})

    alerting.runs(FAIL, OK, FAIL, OK)
    assert alerting.sent == []
    alerting.runs(FAIL, FAIL)
    assert alerting.events() == ["failure"]
    assert alerting.sent[0][1]["consecutive_failures"] == 2


def test_success_alerts_are_sent_after_every_success_when_asked(open_alerting):
    alerting = open_alerting()
    alerting.create(notify={"url": HOOK, "on": ["success"]})

    alerting.runs(OK, OK, FAIL, OK)

    assert alerting.events() == ["success", "success", "success"]
    assert [p["run_id"] for _, p in alerting.sent] == [r["run_id"] for r in alerting.records()
                                                       if r["status"] == "ok"]


def test_with_every_event_asked_for_a_recovery_is_followed_by_a_success(open_alerting):
    alerting = open_alerting()
    alerting.create(notify={"url": HOOK, "on": ["failure", "recovery", "success"]})

    alerting.runs(OK, FAIL, OK)

    assert alerting.events() == ["success", "failure", "recovery", "success"]


def test_retries_count_as_one_run_only_the_last_attempt_decides(open_alerting):
    alerting = open_alerting()
    sid = alerting.create(notify={"url": HOOK}, retry={"count": 2, "min_backoff_seconds": 1})

    alerting.minute(FAIL, FAIL, FAIL)   # one slot: attempts 1, 2 and 3 (1 s, then 2 s apart) all fail

    records = alerting.records()
    assert [(r["trigger"], r["attempt"], r["status"]) for r in records] == [
        ("cron", 1, "error"), ("retry", 2, "error"), ("retry", 3, "error")]
    assert [r.get("alerts") for r in records] == [None, None, ["failure"]]
    assert alerting.events() == ["failure"]
    assert alerting.sent[0][1]["run_id"] == records[2]["run_id"]
    assert alerting.sent[0][1]["consecutive_failures"] == 1
    assert alerting.stack.state.value(f"http:{sid}", "streak") == 1


def test_a_run_whose_retry_succeeds_is_no_failure(open_alerting):
    alerting = open_alerting()
    sid = alerting.create(notify={"url": HOOK, "on": ["failure", "recovery", "success"]},
                          retry={"count": 2, "min_backoff_seconds": 1})

    alerting.minute(FAIL, OK)           # attempt 1 fails, its retry succeeds

    assert [(r["attempt"], r["status"]) for r in alerting.records()] == [(1, "error"), (2, "ok")]
    assert alerting.events() == ["success"]
    assert alerting.stack.state.value(f"http:{sid}", "streak") == 0


@pytest.mark.parametrize("restart", ["clean", "crash"])
def test_the_failure_streak_survives_a_restart_in_the_middle(open_alerting, restart):
    alerting = open_alerting()
    sid = alerting.create(notify={"url": HOOK, "after": 3})
    alerting.runs(FAIL, FAIL)
    assert alerting.sent == []

    alerting = alerting.reopen() if restart == "clean" else alerting.crash_and_reopen()
    alerting.runs(FAIL)

    assert alerting.events() == ["failure"]
    assert alerting.sent[0][1]["consecutive_failures"] == 3
    assert alerting.sent[0][1]["schedule_id"] == sid


@pytest.mark.parametrize("restart", ["clean", "crash"])
def test_a_failure_already_told_is_not_told_again_after_a_restart_and_its_recovery_still_comes(open_alerting,
                                                                                               restart):
    alerting = open_alerting()
    alerting.create(notify={"url": HOOK, "after": 1})
    alerting.runs(FAIL)
    assert alerting.events() == ["failure"]

    alerting = alerting.reopen() if restart == "clean" else alerting.crash_and_reopen()
    alerting.runs(FAIL, FAIL)
    assert alerting.events() == ["failure"]
    alerting.runs(OK)

    assert alerting.events() == ["failure", "recovery"]
    assert alerting.sent[1][1]["consecutive_failures"] == 0


def test_the_server_wide_notify_default_applies_to_schedules_without_notify(open_alerting):
    default = "https://hooks.example.com/default?key=d3fault"
    alerting = open_alerting(notify_url=default, notify_after=2, notify_on=("failure", "recovery", "success"))
    plain = alerting.create(name="plain")
    own = alerting.create(name="own", notify={"url": HOOK, "after": 1})

    alerting.minute(FAIL, FAIL)         # both schedules run each minute, both fail
    alerting.minute(FAIL, FAIL)

    told = [(url, payload["schedule_id"], payload["event"]) for url, payload in alerting.sent]
    assert (HOOK, own, "failure") in told
    assert (default, plain, "failure") in told
    assert [t for t in told if t[1] == own] == [(HOOK, own, "failure")]
    plain_failure = next(p for url, p in alerting.sent if p["schedule_id"] == plain)
    assert plain_failure["consecutive_failures"] == 2 and plain_failure["name"] == "plain"


def test_the_server_wide_default_says_nothing_when_it_is_not_configured(open_alerting):
    alerting = open_alerting()
    alerting.create()

    alerting.runs(FAIL, FAIL, OK)

    assert alerting.sent == []
    assert [r.get("alerts") for r in alerting.records()] == [None, None, None]


def test_the_webhook_body_of_an_http_schedule_has_exactly_the_documented_fields(open_alerting):
    alerting = open_alerting()
    alerting.create(notify={"url": HOOK, "on": ["failure", "recovery", "success"]})

    alerting.runs(FAIL, OK)

    assert alerting.events() == ["failure", "recovery", "success"]
    for _, payload in alerting.sent:
        assert set(payload) == PAYLOAD_FIELDS_HTTP, payload
        assert payload["kind"] == "http"
        assert schedserver.parse_iso(payload["at"]) > 0


def test_manual_runs_of_an_http_schedule_count_in_its_streak(open_alerting):
    alerting = open_alerting()
    sid = alerting.create(notify={"url": HOOK}, enabled=False)
    alerting.runner.script.append(FAIL)

    response = alerting.stack.app.post(f"{CURL_PATH}/{sid}/run", headers=ADMIN)

    assert response.status_int == 200 and response.json["status"] == "error"
    assert alerting.events() == ["failure"]
    assert alerting.sent[0][1]["run_id"] == response.json["run_id"]


def script_alerting(tmp_path: Path, open_alerting, text: str, rel: str = "ops/export.sh", **config) -> Alerting:
    path = tmp_path / "scripts" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return open_alerting(**config)


def counter_script(counter: Path, fail_until: int, *directives: str, cron: str = NEVER) -> str:
    """Fails (exit 3) until its counter file reaches `fail_until`, then succeeds."""
    head = "".join(f"# {d}\n" for d in directives)
    return (f"# @schedule {cron}\n{head}"
            f"n=$(cat '{counter}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{counter}'\n"
            f"if [ $n -lt {fail_until} ]; then echo \"broken $n\" >&2; exit 3; fi\necho \"fine $n\"\n")


def trigger(alerting: Alerting, rel: str) -> dict:
    response = alerting.stack.app.post_json(EXEC + "/trigger", {"scriptPath": rel}, headers=ADMIN)
    assert response.status_int == 200, response.body
    return response.json


def test_a_scripts_alerts_name_its_script_path_and_description_with_exactly_the_documented_fields(tmp_path,
                                                                                                  open_alerting):
    alerting = script_alerting(tmp_path, open_alerting, counter_script(
        tmp_path / "count", 3, f"@notify {HOOK}", "@notify-on failure,recovery,success", "@description export"))

    runs = [trigger(alerting, "ops/export.sh") for _ in range(4)]       # error, error, ok, ok
    assert wait_for(lambda: len(alerting.sent) == 4), (runs, alerting.sent)

    assert alerting.events() == ["failure", "recovery", "success", "success"]
    for url, payload in alerting.sent:
        assert url == HOOK
        assert set(payload) == PAYLOAD_FIELDS_SCRIPT, payload
        assert (payload["kind"], payload["scriptPath"], payload["name"]) == ("script", "ops/export.sh", "export")
    failure = alerting.sent[0][1]
    assert (failure["run_id"], failure["status"], failure["error"], failure["consecutive_failures"]) == \
        (runs[0]["runId"], "error", "broken 1", 1)
    assert [p["run_id"] for _, p in alerting.sent[1:]] == [runs[2]["runId"], runs[2]["runId"], runs[3]["runId"]]


def test_a_script_with_retry_alerts_once_for_a_slot_whose_attempts_all_fail(tmp_path, open_alerting):
    alerting = script_alerting(tmp_path, open_alerting, counter_script(
        tmp_path / "count", 99, f"@notify {HOOK}", "@retry 1 1s", cron="0 0 * * * *"))
    stack = alerting.stack
    key = "script:ops/export.sh"

    stack.clock.set("2025-01-10T13:00:00Z")
    stack.run_due()
    assert wait_for(lambda: stack.scheduler.pending(key))
    assert alerting.sent == []
    stack.clock.set("2025-01-10T13:00:01Z")
    stack.run_due()

    assert wait_for(lambda: alerting.sent)
    assert alerting.events() == ["failure"]
    payload = alerting.sent[0][1]
    assert (payload["consecutive_failures"], payload["status"]) == (1, "error")
    assert payload["run_id"] == stack.state.value(key, "run_id")


def test_the_server_wide_default_applies_to_scripts_without_notify(tmp_path, open_alerting):
    default = "https://hooks.example.com/default?key=d3fault"
    alerting = script_alerting(tmp_path, open_alerting, counter_script(tmp_path / "count", 2), rel="plain.sh",
                               notify_url=default)

    trigger(alerting, "plain.sh")
    trigger(alerting, "plain.sh")
    assert wait_for(lambda: len(alerting.sent) == 2)

    assert [(url, p["event"], p["scriptPath"]) for url, p in alerting.sent] == [
        (default, "failure", "plain.sh"), (default, "recovery", "plain.sh")]


def test_an_alert_decided_just_before_a_crash_is_not_lost(tmp_path, open_alerting, receiver):
    # The alert is written to the outbox before the record that says it was told; the process dies before the
    # sender got to it. The docs: "a restart neither sends an alert again nor loses one".
    alerting = open_alerting()
    sid = alerting.create(notify={"url": receiver.url("/hook")})
    outbox = str(tmp_path / "data" / "alerts-outbox.ndjson")
    alerting.stack.server.alerts.sender = schedserver.AlertSender(schedserver.HttpRunner(), outbox)   # not started
    alerting.runs(FAIL)
    assert alerting.records()[-1].get("alerts") == ["failure"]
    alerting = alerting.crash_and_reopen()
    sender = schedserver.AlertSender(schedserver.HttpRunner(), outbox)     # the restarted server's
    alerting.stack.server.alerts.sender = sender
    sender.start()
    try:
        arrived = receiver.wait_for(1, timeout=5)
        alerting.runs(FAIL)                                  # the failure was told: not again
        time.sleep(0.5)
    finally:
        sender.close()
    assert [a["body"]["event"] for a in receiver.received()] == ["failure"]
    assert arrived[0]["body"]["schedule_id"] == sid


###############################################################################
# The AlertSender against a real receiver #####################################
###############################################################################

class Receiver:
    """A real webhook receiver on 127.0.0.1:<free port>. It keeps every request (method, path, query, headers,
    JSON body) and answers the next status listed in `answers[path]` (200 once the list is used up); while
    `released` is clear, requests wait (at most 30 s) before they are answered."""

    def __init__(self):
        self.answers: dict[str, list[int]] = {}
        self.released = threading.Event()
        self.released.set()
        self.arrivals: list[dict] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                parts = urllib.parse.urlsplit(self.path)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                with receiver._lock:
                    receiver.arrivals.append({"method": self.command, "path": parts.path, "query": parts.query,
                                              "headers": {k.lower(): v for k, v in self.headers.items()},
                                              "body": body, "at": time.time()})
                    answers = receiver.answers.get(parts.path)
                    status = answers.pop(0) if answers else 200
                receiver.released.wait(30)
                payload = b"{}"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass            # the sender went away while the answer was held

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="alerts-receiver", daemon=True)
        self._thread.start()

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def received(self, path: str | None = None) -> list[dict]:
        with self._lock:
            return [a for a in self.arrivals if path is None or a["path"] == path]

    def wait_for(self, n: int, timeout: float, path: str | None = None) -> list[dict]:
        wait_until(lambda: len(self.received(path)) >= n, timeout)
        return self.received(path)

    def stop(self) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def receiver():
    hooks = Receiver()
    yield hooks
    hooks.stop()


class QuickWaits(threading.Event):
    """The sender's stop event, with its backoff waits noted and not waited for (no multi-second sleeps)."""

    def __init__(self):
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is not None:
            self.waits.append(timeout)
            return self.is_set()
        return super().wait(timeout)


def quick_sender(tmp_path: Path, policy: schedserver.EgressPolicy | None = None) -> schedserver.AlertSender:
    sender = schedserver.AlertSender(schedserver.HttpRunner(policy), str(tmp_path / "alerts-outbox.ndjson"))
    sender._closed = QuickWaits()
    return sender


def outbox(tmp_path: Path) -> list[dict]:
    path = tmp_path / "alerts-outbox.ndjson"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def pending(entries: list[dict]) -> list[str]:
    """Ids queued in an outbox and not marked done (whether delivered or given up)."""
    done = {e["id"] for e in entries if "done" in e}
    return [e["id"] for e in entries if "queued" in e and e["id"] not in done]


PAYLOAD = {"event": "failure", "kind": "http", "schedule_id": "0b7a4a43-0c9f-4a7e-9d4c-1f2a3b4c5d6e",
           "name": "pinger", "run_id": "4d9e2f10-2b3c-4d5e-8f70-1a2b3c4d5e6f", "status": "error",
           "error": "HTTP 500", "consecutive_failures": 1, "at": "2025-01-10T12:01:00.000Z"}


def delivered_through(sender: schedserver.AlertSender, count: int = 1, timeout: float = 15.0) -> None:
    assert wait_for(lambda: sender.delivered + sender.failed >= count, timeout), (sender.delivered, sender.failed)


def test_an_alert_is_posted_as_json_with_the_event_header(tmp_path, receiver):
    sender = quick_sender(tmp_path)
    sender.start()
    try:
        sender.send(receiver.url("/hook"), PAYLOAD)
        delivered_through(sender)
    finally:
        sender.close()

    [arrival] = receiver.received()
    assert (arrival["method"], arrival["path"], arrival["body"]) == ("POST", "/hook", PAYLOAD)
    assert arrival["headers"]["content-type"] == "application/json"
    assert arrival["headers"]["x-schedserver-event"] == "failure"
    assert (sender.delivered, sender.failed) == (1, 0)
    assert pending(outbox(tmp_path)) == []


def test_delivery_is_tried_3_times_with_growing_waits_on_500_and_its_failure_is_logged_without_the_query(tmp_path,
                                                                                                   receiver, caplog):
    receiver.answers["/hook"] = [500, 500, 500, 500]
    sender = quick_sender(tmp_path)
    sender.start()
    try:
        with caplog.at_level(logging.INFO, logger="schedserver"):
            sender.send(receiver.url("/hook?key=s3cret-query"), PAYLOAD)
            delivered_through(sender)
    finally:
        sender.close()

    assert len(receiver.received("/hook")) == 3
    assert all(a["body"] == PAYLOAD for a in receiver.received())
    assert sender._closed.waits == sorted(sender._closed.waits) and len(sender._closed.waits) == 2
    assert sender._closed.waits[0] < sender._closed.waits[1]
    assert (sender.delivered, sender.failed) == (0, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("not delivered" in m and f"127.0.0.1:{receiver.port}/hook?<query>" in m and "3 tries" in m
               for m in warnings), warnings
    assert "s3cret-query" not in caplog.text
    entries = outbox(tmp_path)
    assert pending(entries) == [] and [e["done"] for e in entries if "done" in e] == [False]


def test_delivery_that_succeeds_on_the_third_try_is_logged_as_delivered_without_the_query(tmp_path, receiver,
                                                                                           caplog):
    receiver.answers["/hook"] = [500, 503]
    sender = quick_sender(tmp_path)
    sender.start()
    try:
        with caplog.at_level(logging.INFO, logger="schedserver"):
            sender.send(receiver.url("/hook?key=s3cret-query"), PAYLOAD)
            delivered_through(sender)
    finally:
        sender.close()

    assert len(receiver.received("/hook")) == 3
    assert (sender.delivered, sender.failed) == (1, 0)
    infos = [r.getMessage() for r in caplog.records]
    assert any("delivered" in m and "?<query>" in m for m in infos), infos
    assert "s3cret-query" not in caplog.text
    assert [e["done"] for e in outbox(tmp_path) if "done" in e] == [True]


def test_delivery_logs_never_show_credentials_in_the_webhook_url(tmp_path, receiver, caplog):
    receiver.answers["/hook"] = [500, 500, 500]
    sender = quick_sender(tmp_path)
    sender.start()
    try:
        with caplog.at_level(logging.INFO, logger="schedserver"):
            sender.send(f"http://alerts:pa55w0rd@127.0.0.1:{receiver.port}/hook", PAYLOAD)
            delivered_through(sender)
    finally:
        sender.close()

    assert any("not delivered" in r.getMessage() for r in caplog.records)
    assert "pa55w0rd" not in caplog.text


def test_delivery_refused_by_the_egress_policy_is_logged_and_never_reaches_the_receiver(tmp_path, receiver,
                                                                                        caplog):
    sender = quick_sender(tmp_path, schedserver.EgressPolicy(deny=("127.0.0.0/8", "::1/128")))
    sender.start()
    try:
        with caplog.at_level(logging.INFO, logger="schedserver"):
            sender.send(receiver.url("/hook?key=s3cret-query", host="localhost"), PAYLOAD)
            delivered_through(sender)
    finally:
        sender.close()

    assert receiver.received() == []
    assert (sender.delivered, sender.failed) == (0, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("not delivered" in m and "egress policy refuses" in m for m in warnings), warnings
    assert "s3cret-query" not in caplog.text


def test_send_returns_at_once_while_the_webhook_is_still_answering(tmp_path, receiver):
    receiver.released.clear()               # the receiver holds every request
    sender = quick_sender(tmp_path)
    sender.start()
    try:
        sender.send(receiver.url("/hook"), PAYLOAD)
        sender.send(receiver.url("/hook"), {**PAYLOAD, "event": "recovery"})
        # Both calls came back although the first delivery is still waiting for its answer.
        assert receiver.wait_for(1, timeout=10)
        assert sender.delivered == 0
        assert len(pending(outbox(tmp_path))) == 2
        receiver.released.set()
        delivered_through(sender, 2)
    finally:
        receiver.released.set()
        sender.close()

    assert [a["body"]["event"] for a in receiver.received()] == ["failure", "recovery"]
    assert pending(outbox(tmp_path)) == []


def test_an_alert_left_in_the_outbox_is_sent_at_the_next_start_and_a_finished_one_is_not(tmp_path, receiver):
    path = tmp_path / "alerts-outbox.ndjson"
    left = {"id": "a1", "queued": "2025-01-10T12:01:00.000Z", "url": receiver.url("/left"), "payload": PAYLOAD}
    finished = {"id": "a2", "queued": "2025-01-10T12:00:00.000Z", "url": receiver.url("/finished"),
                "payload": {**PAYLOAD, "event": "recovery"}}
    path.write_text("\n".join([json.dumps(finished), json.dumps(left), json.dumps({"id": "a2", "done": True}),
                               "{not json", ""]))
    sender = quick_sender(tmp_path)
    sender.start()
    try:
        delivered_through(sender)
    finally:
        sender.close()

    assert [(a["path"], a["body"]) for a in receiver.received()] == [("/left", PAYLOAD)]
    entries = outbox(tmp_path)
    assert [e["id"] for e in entries] == ["a1", "a1"] and pending(entries) == []


def test_an_alert_cut_short_by_a_stop_stays_in_the_outbox_and_is_sent_at_the_next_start(tmp_path, receiver):
    receiver.answers["/hook"] = [500]
    sender = schedserver.AlertSender(schedserver.HttpRunner(), str(tmp_path / "alerts-outbox.ndjson"))
    sender.start()
    sender.send(receiver.url("/hook"), PAYLOAD)
    assert receiver.wait_for(1, timeout=10)
    sender.close()          # during the backoff after the first try: given up for now, not marked done
    assert len(pending(outbox(tmp_path))) == 1

    again = quick_sender(tmp_path)
    again.start()
    try:
        delivered_through(again)
    finally:
        again.close()

    assert [a["body"] for a in receiver.received()] == [PAYLOAD, PAYLOAD]
    assert again.delivered == 1 and pending(outbox(tmp_path)) == []


###############################################################################
# End to end: the real server, target and receiver ############################
###############################################################################

def write_script(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def events_of(arrivals: list[dict]) -> list[str]:
    return [a["body"]["event"] for a in arrivals]


def http_runs(server: ServerProcess, sid: str, **params) -> list[dict]:
    response = server.api("GET", f"{CURL_PATH}/{sid}/runs", params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def script_history(server: ServerProcess, rel: str) -> list[dict]:
    response = server.api("GET", EXEC + "/history", params={"scriptPath": rel, "limit": 100})
    assert response.status_code == 200, response.text
    return response.json()["entries"]


def test_e2e_an_http_schedule_against_a_failing_then_healthy_target_sends_one_failure_then_one_recovery(
        tmp_path, receiver):
    with TargetServer(status=500) as target, ServerProcess(tmp_path / "data", tmp_path / "scripts") as server:
        created = server.api("POST", json={"cron": "* * * * * *", "name": "pinger",
                                           "request": {"url": target.url + "/ping"},
                                           "notify": {"url": receiver.url("/hook?key=s3cret-http")}})
        assert created.status_code == 201, created.text
        sid = created.json()["id"]

        assert events_of(receiver.wait_for(1, timeout=20)) == ["failure"]
        assert wait_until(lambda: len(http_runs(server, sid, status="error")) >= 3, 20)
        assert events_of(receiver.received()) == ["failure"]        # more failures: nothing more
        target.status = 200
        assert events_of(receiver.wait_for(2, timeout=20)) == ["failure", "recovery"]
        assert wait_until(lambda: len(http_runs(server, sid, status="ok")) >= 3, 20)

    # The stop sends whatever alert is still queued: every alert of these runs has arrived by now.
    arrivals = receiver.received()
    assert events_of(arrivals) == ["failure", "recovery"]
    failure, recovery = (a["body"] for a in arrivals)
    assert set(failure) == PAYLOAD_FIELDS_HTTP and set(recovery) == PAYLOAD_FIELDS_HTTP
    assert (failure["kind"], failure["schedule_id"], failure["name"], failure["status"]) == \
        ("http", sid, "pinger", "error")
    assert failure["error"].startswith("HTTP 500") and failure["consecutive_failures"] == 1
    assert (recovery["status"], recovery["error"], recovery["consecutive_failures"]) == ("ok", None, 0)
    assert all(a["method"] == "POST" and a["query"] == "key=s3cret-http" for a in arrivals)
    assert [a["headers"]["x-schedserver-event"] for a in arrivals] == ["failure", "recovery"]
    assert f"alert failure for {sid} delivered to http://127.0.0.1:{receiver.port}/hook?<query>" in \
        server.stderr_text()
    assert "s3cret-http" not in server.stderr_text()


def test_e2e_a_script_that_fails_twice_then_succeeds_sends_one_failure_then_one_recovery(tmp_path, receiver):
    scripts = tmp_path / "scripts"
    write_script(scripts, "alerting/export.sh", counter_script(
        tmp_path / "count", 3, "@description nightly export", f"@notify {receiver.url('/hook?key=s3cret-script')}",
        cron="* * * * * *"))
    with ServerProcess(tmp_path / "data", scripts) as server:
        assert events_of(receiver.wait_for(2, timeout=25)) == ["failure", "recovery"]
        assert wait_until(lambda: len(script_history(server, "alerting/export.sh")) >= 5, 20)
        history = {e["runId"]: e for e in script_history(server, "alerting/export.sh")}

    # The stop sends whatever alert is still queued: every alert of these runs has arrived by now.
    arrivals = receiver.received()
    assert events_of(arrivals) == ["failure", "recovery"]
    failure, recovery = (a["body"] for a in arrivals)
    for body in (failure, recovery):
        assert set(body) == PAYLOAD_FIELDS_SCRIPT
        assert (body["kind"], body["scriptPath"], body["name"]) == ("script", "alerting/export.sh", "nightly export")
    assert (history[failure["run_id"]]["status"], history[failure["run_id"]]["error"]) == ("error", "broken 1")
    assert (failure["status"], failure["error"], failure["consecutive_failures"]) == ("error", "broken 1", 1)
    assert (history[recovery["run_id"]]["status"], recovery["status"], recovery["consecutive_failures"]) == \
        ("ok", "ok", 0)
    assert "s3cret-script" not in server.stderr_text()


def test_e2e_delivery_is_tried_3_times_when_the_receiver_answers_500_and_logged_without_the_query(tmp_path,
                                                                                                 receiver):
    scripts = tmp_path / "scripts"
    write_script(scripts, "ops/gives-up.sh", counter_script(
        tmp_path / "count-a", 10**6, f"@notify {receiver.url('/gives-up?key=s3cret-a')}", cron="* * * * * *"))
    write_script(scripts, "ops/third-time.sh", counter_script(
        tmp_path / "count-b", 10**6, f"@notify {receiver.url('/third-time?key=s3cret-b')}", cron="* * * * * *"))
    receiver.answers["/gives-up"] = [500, 500, 500, 500]
    receiver.answers["/third-time"] = [500, 500]
    with ServerProcess(tmp_path / "data", scripts) as server:
        assert wait_until(lambda: "alert failure for ops/gives-up.sh not delivered" in server.stderr_text() and
                          "alert failure for ops/third-time.sh delivered" in server.stderr_text(), 40), \
            server.stderr_text()
        given_up, third_time = receiver.received("/gives-up"), receiver.received("/third-time")

    assert len(given_up) == 3 and len(third_time) == 3
    assert len({json.dumps(a["body"], sort_keys=True) for a in given_up}) == 1
    assert events_of(given_up) == ["failure"] * 3 and events_of(third_time) == ["failure"] * 3
    log = server.stderr_text()
    assert f"alert failure for ops/gives-up.sh not delivered to http://127.0.0.1:{receiver.port}/gives-up?<query> " \
           "after 3 tries" in log
    assert f"alert failure for ops/third-time.sh delivered to http://127.0.0.1:{receiver.port}/third-time?<query>" \
        in log
    assert "s3cret-a" not in log and "s3cret-b" not in log


def test_e2e_delivery_refused_by_the_egress_policy_is_logged_and_never_holds_up_runs(tmp_path, receiver):
    # No @notify: the server-wide [notify] default (from the environment) names the webhook.
    scripts = tmp_path / "scripts"
    write_script(scripts, "ops/broken.sh", counter_script(tmp_path / "count", 10**6, cron="* * * * * *"))
    env = {"SCHEDSERVER_CURL_DENY_NETWORKS": "127.0.0.0/8,::1/128",
           "SCHEDSERVER_NOTIFY_URL": receiver.url("/default?key=s3cret-egress", host="localhost")}
    with ServerProcess(tmp_path / "data", scripts, env=env) as server:
        assert wait_until(lambda: "not delivered" in server.stderr_text(), 30), server.stderr_text()
        runs_by_then = script_history(server, "ops/broken.sh")
        assert wait_until(lambda: len(script_history(server, "ops/broken.sh")) > len(runs_by_then) + 1, 20)

    assert receiver.received() == []
    log = server.stderr_text()
    refusal = next(line for line in log.splitlines() if "not delivered" in line)
    assert "ops/broken.sh" in refusal and "egress policy refuses" in refusal and "?<query>" in refusal
    assert "s3cret-egress" not in log
    # The runs went on every second while the alert was tried three times (waits of 1 s and 4 s between).
    assert len(runs_by_then) >= 3
    assert {e["status"] for e in runs_by_then} == {"error"}


def test_e2e_an_alert_queued_when_the_server_stops_is_delivered_at_the_next_start(tmp_path, receiver):
    data = tmp_path / "data"
    receiver.released.clear()           # the first delivery is still waiting for its answer when the server stops
    with TargetServer(status=500) as target:
        server = ServerProcess(data, tmp_path / "scripts").start()
        try:
            created = server.api("POST", json={"cron": "* * * * * *", "name": "pinger",
                                               "request": {"url": target.url + "/ping"},
                                               "notify": {"url": receiver.url("/hook")}})
            assert created.status_code == 201, created.text
            sid = created.json()["id"]
            [held] = receiver.wait_for(1, timeout=20)
        finally:
            assert server.stop() == 0, server.stderr_text()
        queued = [e for e in outbox(data) if "queued" in e]
        assert [e["payload"]["run_id"] for e in queued] == [held["body"]["run_id"]]
        assert pending(outbox(data)) == [queued[0]["id"]]
        receiver.released.set()

        again = ServerProcess(data, tmp_path / "scripts").start()
        try:
            arrivals = receiver.wait_for(2, timeout=20)
            # More failed runs after the start: the failure was told before the stop, so it is not told again.
            started = time.time()
            assert wait_until(lambda: any(r["started_at"] and schedserver.parse_iso(r["started_at"]) > started + 1
                                          for r in http_runs(again, sid, status="error")), 20)
        finally:
            assert again.stop() == 0, again.stderr_text()

    assert [a["body"] for a in arrivals[:2]] == [held["body"], held["body"]]
    assert events_of(receiver.received()) == ["failure", "failure"]
    assert pending(outbox(data)) == []
    assert f"alert failure for {sid} delivered" in again.stderr_text()
